"""Races and replay edge cases, each against a real server.

A stale shared-cache read must not bring back a token the server just
rejected (nor one invalidate() dropped); the replay carries cookies the 401
set; a redirect after a replay carries the new token; trusted hosts are
normalised like request hosts.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from requests_opsnow import OpsNowAuth, TokenRequestError
from requests_opsnow.cache import MemoryTokenCache
from requests_opsnow.testing import FakeOpsNow, RecordedRequest, Reply

from .helpers import COMPANIES, MakeAuth, bearer

pytestmark = pytest.mark.timeout(20)


# -- a stale cache read resurrects the token the server just rejected -----------------


class SlowDeleteCache(MemoryTokenCache):
    """A store whose delete() takes a moment, as a networked store's (Redis) does.

    Once armed, delete() waits until some other thread has read the store, and
    that read lingers a little, so the reader's flight is still in the air when
    the deleting thread goes on to wait for a token.
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.deleting = threading.Event()
        self.read_while_deleting = threading.Event()

    def delete(self, key: str, token: Any = None) -> None:
        if self.armed:
            self.deleting.set()
            self.read_while_deleting.wait(5)
        super().delete(key, token)

    def get(self, key: str) -> Any:
        token = super().get(key)
        if self.armed and self.deleting.is_set() and not self.read_while_deleting.is_set():
            self.read_while_deleting.set()
            time.sleep(0.3)  # the deleting thread joins this flight meanwhile
        return token


def test_replay_never_uses_the_token_the_server_just_rejected(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    cache = SlowDeleteCache()
    auth = make_auth(cache=cache)
    revoked = auth.get_token()
    fake.revoke_tokens()
    cache.armed = True
    outcome: dict[str, requests.Response] = {}

    def request_hit_by_the_revocation() -> None:
        with requests.Session() as s:
            response = s.get(fake.base_url + COMPANIES, auth=auth, timeout=10)
            response.close()
            outcome["response"] = response

    worker = threading.Thread(target=request_hit_by_the_revocation)
    worker.start()
    assert cache.deleting.wait(5)  # the 401 handler dropped the token, is deleting it
    auth.get_token()  # another caller needs a token right now
    worker.join(10)

    response = outcome["response"]
    assert [r.status_code for r in response.history] == [401]
    assert bearer(fake.api_requests[-1]) != revoked  # the replay carried a new token
    assert response.status_code == 200
    assert auth.get_token() != revoked  # and the rejected token is not back in use


def test_invalidate_is_not_undone_by_a_concurrent_fetch(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    cache = SlowDeleteCache()
    auth = make_auth(cache=cache)
    forgotten = auth.get_token()
    cache.armed = True
    invalidating = threading.Thread(target=auth.invalidate)
    invalidating.start()
    assert cache.deleting.wait(5)
    auth.get_token()  # concurrent caller
    invalidating.join(10)

    assert auth.get_token() != forgotten  # invalidate() has returned: the token is gone


# -- cookies the 401 set --------------------------------------------------------------


@pytest.fixture
def cookie_fake() -> Iterator[FakeOpsNow]:
    """A 401 from /test/echo also sets a (load-balancer style) cookie."""
    with FakeOpsNow() as server:

        def echo(request: RecordedRequest) -> Reply:
            if server.is_authorized(request):
                return Reply.json(200, {"status": "success", "data": {}})
            challenge = {"WWW-Authenticate": "Bearer", "Set-Cookie": "lb=node7; Path=/"}
            return Reply.opsnow_error(401, "Unauthorized", **challenge)

        server.route("*", "/test/echo", echo, authorized=False)  # it answers the 401 itself
        yield server


def test_replay_carries_the_cookie_the_401_set_as_well_as_the_sessions(
    cookie_fake: FakeOpsNow,
) -> None:
    auth = OpsNowAuth(cookie_fake.api_key, base_url=cookie_fake.base_url)
    try:
        with requests.Session() as s:
            s.auth = auth
            s.cookies.set("sid", "abc123")
            s.get(cookie_fake.base_url + COMPANIES)
            cookie_fake.revoke_tokens()
            response = s.get(cookie_fake.base_url + "/test/echo")
    finally:
        auth.close()

    assert response.status_code == 200
    rejected, replayed = cookie_fake.api_requests[-2:]
    assert rejected.header("Cookie") == "sid=abc123"
    cookies = sorted((replayed.header("Cookie") or "").split("; "))
    assert cookies == ["lb=node7", "sid=abc123"]  # "Replay after a 401": plus any the 401 set


# -- a redirect answered after a replay --------------------------------------------------


def redirect_then(request: RecordedRequest) -> Reply:
    target = request.query.get("then", [""])[0]
    if target:
        return Reply(302, headers={"Location": target})
    return Reply.json(200, {"status": "success", "data": {}})


@pytest.fixture
def redirect_fake() -> Iterator[FakeOpsNow]:
    """/test/echo?then=PATH: 401 without a valid token, else a 302 to PATH (same host)."""
    with FakeOpsNow() as server:
        server.route("*", "/test/echo", redirect_then, authorized=True)
        yield server


def revoked_then_redirected(
    fake: FakeOpsNow, session: requests.Session
) -> requests.PreparedRequest:
    """A token in use, then revoked; the request whose replay the fake will redirect."""
    session.auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    session.get(fake.base_url + COMPANIES, timeout=10)
    fake.revoke_tokens()
    return session.prepare_request(
        requests.Request("GET", fake.base_url + "/test/echo", params={"then": COMPANIES})
    )


def test_redirect_after_a_replay_ends_with_the_new_token_without_a_new_fetch(
    redirect_fake: FakeOpsNow,
) -> None:
    fake = redirect_fake
    with requests.Session() as s:
        sent = revoked_then_redirected(fake, s)
        response = s.send(sent, timeout=10)

    assert response.status_code == 200
    assert fake.token_requests == 2
    revoked, new = fake.issued_tokens
    hops = fake.api_requests[1:]
    # requests follows the replay's redirect from the caller's request, which keeps the
    # token it was sent with: that hop gets a 401 and is replayed with the new token.
    assert [(r.path, bearer(r)) for r in hops] == [
        ("/test/echo", revoked),
        ("/test/echo", new),
        (COMPANIES, revoked),
        (COMPANIES, new),
    ]
    assert sent.headers["Authorization"] == f"Bearer {revoked}"  # the caller's object: as sent


# -- host matching ---------------------------------------------------------------------


def test_base_url_host_written_with_a_trailing_dot_gets_the_token(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    auth = make_auth(base_url="https://gateway.corp.example.", token_url=fake.token_url)
    for url in ("https://gateway.corp.example./v2/x", "https://gateway.corp.example/v2/x"):
        prepared = auth(requests.Request("GET", url).prepare())
        assert "Authorization" in prepared.headers, url
        assert prepared.headers["Authorization"] == f"Bearer {auth.get_token()}"


# -- invalidate() racing a flight that reads a slow store -----------------------------------


class SlowReads(MemoryTokenCache):
    """A store whose reads take a moment, as a networked store's do."""

    def get(self, key: str) -> Any:
        token = super().get(key)
        time.sleep(0.1)
        return token


def test_invalidate_is_not_undone_by_a_flight_reading_the_store(fake: FakeOpsNow) -> None:
    store = SlowReads()
    # Another process's token in the shared store (another margin: another lifecycle).
    planted = OpsNowAuth(
        fake.api_key, base_url=fake.base_url, cache=store, refresh_margin=120
    ).get_token()
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, cache=store)
    barrier = threading.Barrier(2, timeout=5)

    def reader() -> None:
        barrier.wait()
        auth.get_token()

    def invalidator() -> None:
        barrier.wait()
        time.sleep(0.03)  # while the reader's flight is reading the store
        auth.invalidate()

    threads = [threading.Thread(target=reader), threading.Thread(target=invalidator)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert auth.get_token() != planted  # invalidate() has returned: the token is gone


# -- waiters and the leader's failure --------------------------------------------------------


def test_each_waiter_raises_an_exception_of_its_own(fake: FakeOpsNow) -> None:
    fake.fail_token_requests(503, count=-1, delay=0.3)
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, max_retries=0)
    barrier = threading.Barrier(8, timeout=10)
    errors: list[BaseException] = []

    def caller() -> None:
        barrier.wait()
        try:
            auth.get_token()
        except TokenRequestError as error:
            errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert fake.token_requests == 1
    assert len(errors) == 8
    assert len({id(error) for error in errors}) == 8  # no traceback shared between threads
    assert len({str(error) for error in errors}) == 1


def test_a_failed_refresh_of_a_still_valid_token_keeps_it_when_asked_for_a_fresh_one(
    fake: FakeOpsNow, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, max_retries=0)
    token = auth.get_token()
    clock.advance(3600 - 200)  # due, with 200 s of validity left
    fake.fail_token_requests(503, count=-1)
    with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
        assert auth.get_token_info(fresh=True).value == token
    assert "refresh failed" in caplog.text
    clock.advance(200)  # expired now: the failure is the answer
    with pytest.raises(TokenRequestError):
        auth.get_token_info(fresh=True)


def test_the_401_stays_in_history_when_the_replay_is_redirected(
    redirect_fake: FakeOpsNow,
) -> None:
    with requests.Session() as s:
        sent = revoked_then_redirected(redirect_fake, s)
        response = s.send(sent, timeout=10)
        assert response.status_code == 200
        statuses = [r.status_code for r in response.history]
        assert statuses[0] == 401  # the 401 that caused the replay comes first
        assert 302 in statuses
        pickled = pickle.loads(pickle.dumps(response))
        assert [r.status_code for r in pickled.history] == statuses
        # Sending the same request (with its revoked token) again is a new story of its
        # own: its own 401 and replay, none of the first story's responses.
        again = s.send(sent, timeout=10)
    assert again.status_code == 200
    assert [r.status_code for r in again.history] == statuses
    assert not {id(r) for r in again.history} & {id(r) for r in response.history}
