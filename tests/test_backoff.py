"""When OpsNow says no or is down: a failure is the answer for a backoff window.

``docs/design.md``, "Token lifecycle" ("Backoff"): after a failed token request,
every caller that needs a new token gets that failure again at once, without a
token request, until a window ends (full-jitter exponential for an outage, a
window of its own for a rejected key); a valid token is used throughout.
Counted at the server.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from requests_opsnow import InvalidApiKeyError, TokenRequestError, _clock
from requests_opsnow._lifecycle import BACKOFF_MIN, LONGEST_BACKOFF, REJECTED_KEY_BACKOFF
from requests_opsnow.cache import cache_key
from requests_opsnow.filecache import FileTokenCache
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, FakeClock, MakeAuth, get_status, run_together

pytestmark = pytest.mark.timeout(60)


def test_a_rejected_key_costs_one_token_request_per_window_for_200_calls_in_8_threads(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    auth = make_auth(api_key="a-revoked-or-mistyped-key")

    def calls() -> list[str]:
        outcomes = []
        for _ in range(25):
            try:
                auth.get_token()
            except InvalidApiKeyError as error:
                outcomes.append(str(error))
        return outcomes

    outcomes = [outcome for thread in run_together(8, calls) for outcome in thread]
    assert len(outcomes) == 200  # every call failed, with the key's error...
    assert fake.token_requests == 1  # ...from one token request
    backing_off = [o for o in outcomes if "backing off" in o]
    assert len(backing_off) >= 199 - 8  # the rest were answered from the window
    assert all("no new token request for 60 s" in o for o in backing_off[-10:])
    assert all("a-revoked-or-mistyped-key" not in o for o in outcomes)

    clock.advance(REJECTED_KEY_BACKOFF)
    with pytest.raises(InvalidApiKeyError, match="rejected by") as again:
        auth.get_token()
    assert "backing off" not in str(again.value)  # a new try, after the window
    assert fake.token_requests == 2


class FastClock:
    """Wall-clock time running ``speed`` times faster than real time, for every thread."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.start = time.time()
        self.real_start = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self.real_start) * self.speed


def test_an_outage_costs_a_bounded_number_of_token_requests_and_ends_with_a_token(
    fake: FakeOpsNow, make_auth: MakeAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 s of 503 (on a clock ten times faster) while 4 threads call continuously. With
    # the jitter at its most aggressive (every window at BACKOFF_MIN), a process makes at
    # most one token request per BACKOFF_MIN: 1 + 20 / BACKOFF_MIN = 21 here.
    fast = FastClock(speed=10)
    monkeypatch.setattr(_clock, "now", fast.now)
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    fake.fail_token_requests(503, count=-1)
    auth = make_auth(max_retries=0)
    url = fake.base_url + COMPANIES
    outage_ends = fast.now() + 20
    seen: list[str] = []
    lock = threading.Lock()

    def call_until_the_outage_ends() -> None:
        while fast.now() < outage_ends:
            try:
                get_status(auth, url)
            except TokenRequestError as error:
                with lock:
                    seen.append(str(error))

    threads = [threading.Thread(target=call_until_the_outage_ends) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    during = fake.token_requests
    assert 2 <= during <= 1 + int(20 / BACKOFF_MIN)
    assert fake.api_requests == []  # no call went out without a token
    windowed = [message for message in seen if "backing off" in message]
    assert len(windowed) > 10 * during  # most calls were answered from a window, at once

    fake.reset()  # the endpoint recovers; the first call after the window gets a token
    deadline = time.monotonic() + 10
    status = 0
    while status != 200 and time.monotonic() < deadline:
        try:
            status = get_status(auth, url)
        except TokenRequestError:
            time.sleep(0.01)
    assert status == 200
    assert fake.token_requests == during + 1


def test_a_valid_token_serves_through_an_outage_and_its_failed_refreshes(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    auth = make_auth(max_retries=0)
    token = auth.get_token()
    fake.fail_token_requests(503, count=-1)
    clock.advance(3600 - 200)  # due: early refreshes fail, in the background
    statuses: list[Any] = []
    for _ in range(20):
        statuses.append(get_status(auth, fake.base_url + COMPANIES))
        clock.advance(5)
    assert statuses == [200] * 20
    assert {r.header("Authorization") for r in fake.api_requests} == {f"Bearer {token}"}
    assert 1 <= fake.token_requests <= 1 + 100 // BACKOFF_MIN  # the windows spaced them out


@pytest.mark.parametrize("ends_in", [60.0, 10.0**9], ids=["a-minute", "a-planted-forever"])
def test_a_window_recorded_in_a_shared_store_holds_unless_it_is_longer_than_any_we_set(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Any, clock: FakeClock, ends_in: float
) -> None:
    # A shared store is outside data: a record no process of ours could have written (one
    # ending past LONGEST_BACKOFF) must not stop every host's token requests for good.
    cache = FileTokenCache(tmp_path)
    key = cache_key(fake.token_url, fake.api_key)
    cache.set_backoff(key, clock.now() + ends_in, "TokenRequestError", "HTTP 503 (elsewhere)")
    auth = make_auth(cache=cache)
    if ends_in <= LONGEST_BACKOFF:
        with pytest.raises(TokenRequestError, match="recorded in the store"):
            auth.get_token()
        assert fake.token_requests == 0
    else:
        assert auth.get_token() == fake.issued_tokens[0]
        assert fake.token_requests == 1
        assert cache.backoff(key) is None  # the token ended it
