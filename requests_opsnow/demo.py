"""``opsnow demo``: a visible walk through OpsNowAuth against the embedded fake server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TextIO

import requests

from .auth import OpsNowAuth
from .testing import FakeOpsNow

COMPANIES = "/platform/v2/companies"
DEMO_TTL = 3.0
"""Token lifetime on the demo server: short, so early refresh happens within the demo."""

DEMO_MARGIN = 1.5
"""Refresh this long before expiry: the refresh happens 1.5 s into the demo token's life."""


def run_demo(out: TextIO) -> int:
    """Run every step, print what happened and the token-request count; 0 if all went well."""
    with FakeOpsNow(ttl=DEMO_TTL) as fake:
        say = _printer(out, fake)
        say(f"fake OpsNow server on {fake.base_url} (tokens live {DEMO_TTL:g} s)")
        auth = OpsNowAuth(fake.api_key, base_url=fake.base_url, refresh_margin=DEMO_MARGIN)
        with requests.Session() as session:
            session.auth = auth
            ok = all(
                step(session, fake, say)
                for step in (_first_fetch, _reuse, _early_refresh, _revocation)
            )
            ok = _threads(fake, say) and ok
        auth.close()
    say_done = "demo finished: every step behaved as expected" if ok else "demo FAILED"
    print(say_done, file=out)
    return 0 if ok else 1


def _printer(out: TextIO, fake: FakeOpsNow) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[token requests: {fake.token_requests}] {text}", file=out, flush=True)

    return say


def _get(session: requests.Session, fake: FakeOpsNow) -> requests.Response:
    response = session.get(fake.base_url + COMPANIES, timeout=10)
    response.close()
    return response


def _first_fetch(session: requests.Session, fake: FakeOpsNow, say: Callable[[str], None]) -> bool:
    response = _get(session, fake)
    say(f"1. first request: token fetched, GET {COMPANIES} -> {response.status_code}")
    return response.ok and fake.token_requests == 1


def _reuse(session: requests.Session, fake: FakeOpsNow, say: Callable[[str], None]) -> bool:
    statuses = [_get(session, fake).status_code for _ in range(5)]
    say(f"2. five more requests reuse the cached token -> {statuses}")
    return statuses == [200] * 5 and fake.token_requests == 1


def _early_refresh(session: requests.Session, fake: FakeOpsNow, say: Callable[[str], None]) -> bool:
    wait = DEMO_TTL - DEMO_MARGIN + 0.1
    say(f"3. waiting {wait:.1f} s until the token is due for early refresh...")
    time.sleep(wait)
    response = _get(session, fake)
    say(f"   request with the still-valid token -> {response.status_code}; refresh runs behind it")
    _wait_for_refresh(fake)
    following = _get(session, fake)
    carried = fake.api_requests[-1].header("Authorization")
    new_token = fake.issued_tokens[-1]
    ok = carried == f"Bearer {new_token}" and not (response.history or following.history)
    say(
        "   the next request carries the new token; the server never answered 401"
        if ok
        else "   the new token was NOT used"
    )
    return ok and response.ok and fake.token_requests == 2


def _wait_for_refresh(fake: FakeOpsNow) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        len(fake.issued_tokens) < 2
        or any(t.name == "requests-opsnow-refresh" for t in threading.enumerate())
    ):
        time.sleep(0.02)


def _revocation(session: requests.Session, fake: FakeOpsNow, say: Callable[[str], None]) -> bool:
    fake.revoke_tokens()
    say("4. the server revokes every token")
    response = _get(session, fake)
    history = [r.status_code for r in response.history]
    say(
        f"   next request: 401 -> one refresh -> one replay -> {response.status_code}"
        f" (history {history})"
    )
    return response.ok and history == [401] and fake.token_requests == 3


def _threads(fake: FakeOpsNow, say: Callable[[str], None]) -> bool:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    before = fake.token_requests
    barrier = threading.Barrier(16)

    def one_request() -> int:
        with requests.Session() as session:
            barrier.wait()
            return session.get(fake.base_url + COMPANIES, auth=auth, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _: one_request(), range(16)))
    auth.close()
    fetched = fake.token_requests - before
    say(
        f"5. 16 threads start at once with a new, empty auth: {statuses.count(200)} x 200,"
        f" {fetched} token request"
    )
    return statuses == [200] * 16 and fetched == 1
