"""No value from a server, a store or a signal can wedge, crash or leak.

Each test here reproduces a way an outside value once broke the auth: huge
numbers, deep JSON, oversized answers, and records planted in a shared store.
"""

from __future__ import annotations

import _weakrefset
import base64
import contextlib
import gc
import gzip
import json
import logging
import math
import pickle
import random
import secrets
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
import requests

from requests_opsnow import (
    FileTokenCache,
    InvalidApiKeyError,
    MemoryTokenCache,
    OpsNowAuth,
    OpsNowAuthError,
    TokenRequestError,
    TokenResponseError,
    _lifecycle,
)
from requests_opsnow._driver_sync import run
from requests_opsnow._lifecycle import (
    LIVENESS_POLL,
    REFETCH_AFTER_401_INTERVAL,
    WAIT_SLACK,
    Cancellation,
    TokenLifecycle,
)
from requests_opsnow._token import (
    MAX_LIFETIME,
    MAX_TOKEN_LENGTH,
    Token,
    parse_token_payload,
    token_from_record,
    token_to_record,
)
from requests_opsnow.cache import cache_key
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, FakeClock, bearer, wait_until

pytestmark = pytest.mark.timeout(30)

NOW = 1_700_000_000.0
HUGE = int("9" * 400)


def jwt_with(payload: bytes) -> str:
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{body}.c2ln"


# -- lifetimes are clamped ------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"accessToken": "t", "expiresIn": 1e306},
        {"accessToken": "t", "expiresIn": 1e12},
        {"accessToken": "t", "expiresAt": 1e300},
        {"accessToken": "t", "expiresAt": "9999-12-31T23:59:59Z"},
        {"accessToken": jwt_with(b'{"exp": 1e308}')},
    ],
    ids=["expiresIn-1e306", "expiresIn-1e12", "expiresAt-1e300", "year-9999", "jwt-exp-1e308"],
)
def test_a_lifetime_beyond_the_maximum_is_clamped(payload: dict[str, object]) -> None:
    token = parse_token_payload(payload, now=NOW)
    assert token.expires_at == NOW + MAX_LIFETIME
    assert math.isfinite(token.lifetime)


def test_a_deeply_nested_jwt_payload_is_ignored_not_a_recursion_error() -> None:
    deep = jwt_with(b"[" * 2900 + b"]" * 2900)  # deeper than the recursion limit, still short
    assert len(deep) <= MAX_TOKEN_LENGTH
    token = parse_token_payload({"accessToken": deep}, now=NOW)
    assert token.expires_at == NOW + 3600.0


def test_an_absurdly_long_token_is_refused() -> None:
    with pytest.raises(TokenResponseError, match="longer than"):
        parse_token_payload({"accessToken": "x" * (MAX_TOKEN_LENGTH + 1)}, now=NOW)


# -- store records: anything unusable is absent -----------------------------------------------


def _record(**fields: object) -> str:
    record = json.loads(token_to_record(Token("stored-token", NOW + 600, NOW - 60)))
    record.update(fields)
    return json.dumps(record)


@pytest.mark.parametrize(
    "raw",
    [
        _record(expires_at=HUGE),
        _record(issued_at=-HUGE),
        _record(expires_at=NOW + 10 * MAX_LIFETIME),
        _record(issued_at=NOW + 900),  # issued after it expires
        _record(access_token="x" * (MAX_TOKEN_LENGTH + 1)),
        "[" * 100_000 + "]" * 100_000,
        b"\xff\xfe not utf-8",
    ],
    ids=[
        "huge-expiry",
        "huge-issue",
        "beyond-max-lifetime",
        "backwards",
        "long-token",
        "deep",
        "bytes",
    ],
)
def test_an_unusable_record_reads_as_absent(raw: str | bytes) -> None:
    assert token_from_record(raw) is None


def test_a_planted_file_record_with_a_huge_number_is_replaced(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    path = tmp_path / f"{cache_key(fake.token_url, fake.api_key)}.json"
    tmp_path.chmod(0o700)
    path.write_text(_record(expires_at=HUGE))
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, cache=FileTokenCache(tmp_path))
    assert auth.get_token() == fake.issued_tokens[0]
    assert json.loads(path.read_text())["access_token"] == fake.issued_tokens[0]


# -- token responses are read with a size limit ------------------------------------------------


def test_a_gzip_bomb_token_response_is_refused_without_inflating_it(fake: FakeOpsNow) -> None:
    bomb = gzip.compress(b'{"accessToken": "' + b"a" * 50_000_000 + b'"}', compresslevel=9)
    fake.fail_token_requests(200, body=bomb, headers={"Content-Encoding": "gzip"})
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with pytest.raises(TokenResponseError, match="larger than") as caught:
        auth.get_token()
    assert fake.api_key not in str(caught.value)


def test_a_token_response_announcing_a_huge_length_is_refused(fake: FakeOpsNow) -> None:
    fake.fail_token_requests(200, body=b"{" + b" " * 200_000 + b"}")
    with pytest.raises(TokenResponseError, match="larger than"):
        OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()


# -- errors never carry the key ---------------------------------------------------------------


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@pytest.mark.parametrize("status", [401, 503, 0], ids=["rejected", "unavailable", "dropped"])
def test_a_token_error_pickles_without_the_key_anywhere(fake: FakeOpsNow, status: int) -> None:
    fake.fail_token_requests(status, count=-1)
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, max_retries=0)
    with pytest.raises(requests.RequestException) as caught:
        auth.get_token()
    for error in _chain(caught.value):
        assert fake.api_key.encode() not in pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        request = getattr(error, "request", None)
        assert fake.api_key not in str(getattr(request, "body", "") or "")


def test_the_servers_reason_phrase_is_masked_too(fake: FakeOpsNow) -> None:
    fake.fail_token_requests(403, reason=f"Forbidden for {fake.api_key}")
    with pytest.raises(InvalidApiKeyError) as caught:
        OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()
    assert "Forbidden for ***" in str(caught.value)
    assert fake.api_key not in str(caught.value)


# -- a slow endpoint is cut off; waiters inherit the bound ------------------------------------


def test_an_endpoint_answering_a_byte_a_second_is_cut_off_for_every_caller(
    fake: FakeOpsNow,
) -> None:
    fake.fail_token_requests(200, count=-1, trickle=1.0)
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, timeout=2, max_retries=0)
    outcomes: list[BaseException | str] = []

    def caller() -> None:
        try:
            outcomes.append(auth.get_token())
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            outcomes.append(error)

    callers = [threading.Thread(target=caller) for _ in range(5)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(15)  # the bound is 2 s to connect + 2 s to read, plus a second of slack
    assert not any(thread.is_alive() for thread in callers)
    assert len(outcomes) == 5
    assert all(isinstance(outcome, TokenRequestError) for outcome in outcomes), outcomes
    assert fake.token_requests == 1  # one request for all five, and it was stopped
    assert wait_until(lambda: fake.open_connections == 0)


# -- an always-401 path is a permission problem, not an expired token -----------------------


def test_a_path_that_always_answers_401_costs_one_refetch_not_one_per_call(
    fake: FakeOpsNow, clock: FakeClock
) -> None:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with requests.Session() as session:
        for _ in range(20):
            response = session.get(fake.base_url + "/test/status/401", auth=auth, timeout=10)
            assert response.status_code == 401
        assert fake.token_requests == 2  # the first token, and one refetch
        assert session.get(fake.base_url + COMPANIES, auth=auth, timeout=10).ok

        clock.advance(REFETCH_AFTER_401_INTERVAL + 1)
        fake.revoke_tokens()  # a real revocation still costs one token request
        revoked = session.get(fake.base_url + COMPANIES, auth=auth, timeout=10)
    assert revoked.ok
    assert [r.status_code for r in revoked.history] == [401]
    assert fake.token_requests == 3


def test_a_token_revoked_again_soon_after_a_replay_is_replaced_again(
    fake: FakeOpsNow, clock: FakeClock
) -> None:
    # A key rotated twice in a row, or a test revoking twice: each token the server once
    # accepted and now refuses is dead, however soon after the last replacement.
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with requests.Session() as session:
        assert session.get(fake.base_url + COMPANIES, auth=auth, timeout=10).ok
        for _ in range(3):
            fake.revoke_tokens()
            clock.advance(5)
            response = session.get(fake.base_url + COMPANIES, auth=auth, timeout=10)
            assert response.ok
            assert [r.status_code for r in response.history] == [401]
    assert fake.token_requests == 4


def test_a_route_the_key_may_not_use_keeps_its_401_while_other_routes_keep_the_token(
    fake: FakeOpsNow, clock: FakeClock
) -> None:
    forbidden = fake.base_url + "/test/status/401"
    with requests.Session() as session:
        session.auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        assert session.get(fake.base_url + COMPANIES, timeout=10).ok
        refused = session.get(forbidden, timeout=10)  # one refetch; its replay is refused too
        assert refused.status_code == 401
        assert [r.status_code for r in refused.history] == [401]
        assert fake.token_requests == 2
        for _ in range(5):
            again = session.get(forbidden, params={"page": 2}, timeout=10)
            assert again.status_code == 401
            assert again.history == []  # returned at once: neither refetched nor replayed
        assert session.get(fake.base_url + COMPANIES, timeout=10).ok
        assert session.post(forbidden, timeout=10).status_code == 401  # another route: its own try
        assert fake.token_requests == 3
        assert session.get(fake.base_url + COMPANIES, timeout=10).ok
        clock.advance(REFETCH_AFTER_401_INTERVAL + 1)
        assert session.get(forbidden, timeout=10).status_code == 401  # tried again, once
        assert session.get(forbidden, timeout=10).status_code == 401
    assert fake.token_requests == 4
    assert {bearer(r) for r in fake.api_requests if r.path == COMPANIES} == set(
        fake.issued_tokens[:3]
    )


# -- a store that fails in any way degrades to memory ----------------------------------------


class BrokenStore(MemoryTokenCache):
    """A store whose reads raise what no store should (a bug in a client library, say)."""

    def get(self, key: str) -> Token | None:
        raise AttributeError("'object' object has no attribute 'items'")


def test_a_store_raising_anything_degrades_to_memory_with_one_warning(
    fake: FakeOpsNow, caplog: pytest.LogCaptureFixture
) -> None:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, cache=BrokenStore())
    with caplog.at_level(logging.WARNING, logger="requests_opsnow"), requests.Session() as session:
        for _ in range(3):
            assert session.get(fake.base_url + COMPANIES, auth=auth, timeout=10).ok
        auth.invalidate()
        assert session.get(fake.base_url + COMPANIES, auth=auth, timeout=10).ok
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "AttributeError" in warnings[0].getMessage()
    assert fake.token_requests == 2


# -- asynchronous exceptions never leave a flight open ------------------------------------------


class Injected(Exception):
    """Raised by a signal handler at a random moment, as a task's time limit would.

    The test takes SIGALRM for itself, so its timeout guard uses a thread instead.
    """


class QuickFetch:
    """An in-process token endpoint: a few microseconds, sometimes a little longer."""

    bound = 0.5

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, cancellation: Cancellation) -> Token:
        self.count += 1
        if random.random() < 0.1:
            time.sleep(0.001)
        now = time.time()
        return Token(f"token-{self.count}", now + 3600, now)


def usable(lifecycle: TokenLifecycle, fetch: QuickFetch) -> Any:
    """A token to send now, as the requests auth asks for one (the thread driver)."""
    return run(lifecycle.obtain(fetch.bound), fetch)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def in_cpython_blind_spot(frame: types.FrameType | None) -> bool:
    """Where CPython itself loses an exception a signal handler raises, whatever our code
    does: a weakref callback (a dead Thread leaving threading's WeakSet) reports it as
    unraisable and drops it, and ``Thread.start`` raising between starting the thread and
    registering it leaves the new thread to die of a KeyError."""
    return frame is not None and (
        frame.f_code.co_filename == _weakrefset.__file__
        or frame.f_code is threading.Thread.start.__code__
    )


@pytest.mark.skipif(
    sys.version_info < (3, 10),
    reason="CPython 3.9 skips a `with lock:` block's release when a signal handler raises"
    " at its very end (CPython issue 29988, fixed in 3.10): any lock can stay held there",
)
@pytest.mark.timeout(120, method="thread")
def test_signals_at_random_moments_never_wedge_the_lifecycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An exception raised inside a fetch is a failed flight: no backoff here, so that the
    # signals keep landing at every moment of a fetch, not mostly in backoff windows.
    for name in ("BACKOFF_FIRST", "BACKOFF_MIN", "BACKOFF_MAX"):
        monkeypatch.setattr(_lifecycle, name, 0.0)
    lifecycle = TokenLifecycle(f"stress-{secrets.token_hex(4)}", 300.0, None)
    fetch = QuickFetch()
    stop = threading.Event()

    def alongside() -> None:  # other threads share the flights the main thread leads or joins
        while not stop.is_set():
            with contextlib.suppress(OpsNowAuthError):
                usable(lifecycle, fetch)
                time.sleep(0.0005)

    armed = [False]  # the handler raises only while the lifecycle is being called

    def on_alarm(signum: int, frame: types.FrameType | None) -> None:
        if armed[0] and not in_cpython_blind_spot(frame):
            raise Injected

    others = [threading.Thread(target=alongside) for _ in range(2)]
    usable(lifecycle, fetch)  # the watchdog thread starts before the first signal
    # The collector runs weakref callbacks of whatever garbage earlier tests left; an
    # exception a handler raises inside one of those is unraisable (CPython reports it and
    # drops it), whatever code is running. The signals are meant for the lifecycle's code.
    gc.collect()
    gc.disable()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    interrupted = 0
    try:
        for thread in others:
            thread.start()
        deadline = time.monotonic() + 60
        while fetch.count < 3000 and time.monotonic() < deadline:
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, random.uniform(0.00002, 0.001))
                    run(lifecycle.invalidate(), fetch)
                    usable(lifecycle, fetch)
                finally:
                    armed[0] = False
            except (Injected, OpsNowAuthError):
                interrupted += 1
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
        stop.set()
        for thread in others:
            thread.join(10)
    assert fetch.count >= 3000
    assert interrupted > 100  # the signals did land, at many different moments

    answered: list[Token] = []
    checker = threading.Thread(target=lambda: answered.append(usable(lifecycle, fetch).token))
    checker.start()
    checker.join(fetch.bound + WAIT_SLACK + 2 * LIVENESS_POLL + 1)
    assert answered, "the lifecycle no longer answers within its bound"
    run(lifecycle.invalidate(), fetch)
    assert usable(lifecycle, fetch).token != answered[0]  # and it still fetches
