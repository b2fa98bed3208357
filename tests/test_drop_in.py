"""Old scripts, unchanged: an auth built per call costs no token request.

Every OpsNowAuth with the same token URL, key, refresh margin and store shares
one token lifecycle in a process (``docs/design.md``, "One lifecycle per key"),
and the memory that costs stays bounded however many auths and keys pass by.
"""

from __future__ import annotations

import gc
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import responses

from requests_opsnow import OpsNowAuth, Token, _lifecycle
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, bearer, memory_kept_by, wait_until

pytestmark = pytest.mark.timeout(60)

MOCK_TOKEN_URL = "https://api.opsnow360.io/platform/v2/identity/api-keys/token"
MOCK_API_URL = "https://api.opsnow360.io/platform/v2/companies"


def test_a_thousand_calls_each_building_an_auth_make_one_token_request(fake: FakeOpsNow) -> None:
    url = fake.base_url + COMPANIES
    for _ in range(1000):
        response = requests.get(
            url, auth=OpsNowAuth(fake.api_key, base_url=fake.base_url), timeout=(5, 10)
        )
        assert response.status_code == 200
    assert fake.token_requests == 1
    assert len(fake.api_requests) == 1000


def test_32_threads_each_building_their_own_auth_at_once_make_one_token_request(
    fake: FakeOpsNow,
) -> None:
    barrier = threading.Barrier(32)

    def one_call() -> int:
        auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        barrier.wait(10)
        return requests.get(fake.base_url + COMPANIES, auth=auth, timeout=(5, 10)).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(lambda _: one_call(), range(32), timeout=40))
    assert statuses == [200] * 32
    assert fake.token_requests == 1


def test_2000_auths_made_and_dropped_leave_no_socket_to_the_token_endpoint(
    fake: FakeOpsNow,
) -> None:
    for _ in range(2000):
        auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        auth.get_token()
        del auth
    gc.collect()
    assert fake.token_requests == 1
    assert wait_until(lambda: fake.open_connections <= 1)


def test_a_revocation_seen_by_one_auth_is_seen_by_every_auth_with_the_key(
    fake: FakeOpsNow,
) -> None:
    first, second = (OpsNowAuth(fake.api_key, base_url=fake.base_url) for _ in range(2))
    url = fake.base_url + COMPANIES
    with requests.Session() as session:
        assert session.get(url, auth=first, timeout=10).status_code == 200
        fake.revoke_tokens()
        replayed = session.get(url, auth=first, timeout=10)
        direct = session.get(url, auth=second, timeout=10)
    assert [r.status_code for r in replayed.history] == [401]
    assert direct.status_code == 200
    assert not direct.history  # the other auth did not meet the 401: it had the new token
    assert fake.token_requests == 2
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[-1]


def test_invalidate_on_one_auth_is_seen_by_another_with_the_key(fake: FakeOpsNow) -> None:
    first, second = (OpsNowAuth(fake.api_key, base_url=fake.base_url) for _ in range(2))
    old = first.get_token()
    second.invalidate()
    assert first.get_token() != old
    assert fake.token_requests == 2


def test_different_keys_get_different_tokens(fake: FakeOpsNow) -> None:
    with FakeOpsNow() as other:
        mine = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        theirs = OpsNowAuth(other.api_key, base_url=fake.base_url)
        assert mine.get_token() in fake.issued_tokens
        with pytest.raises(requests.RequestException):
            theirs.get_token()  # the other server's key is not this server's
    assert fake.token_requests == 2


# -- bounded memory ------------------------------------------------------------------------


def _token_for_every_key(rsps: responses.RequestsMock) -> None:
    rsps.add(
        responses.POST,
        MOCK_TOKEN_URL,
        json={"accessToken": "mock-token", "expiresIn": 3600},
    )


def _use_keys(prefix: str, count: int) -> None:
    prefix += secrets.token_hex(4)
    for number in range(count):
        OpsNowAuth(f"{prefix}-{number}").get_token()


def _forget_calls(rsps: responses.RequestsMock) -> None:
    """responses records every call, globally and per registered response."""
    rsps.calls.reset()
    for registered in rsps.registered():
        calls = getattr(registered, "calls", None)  # per response since responses 0.24
        if calls is not None:
            calls.reset()


SMALL_REGISTRY = 100_000
"""A registry budget (bytes) that 800 keys overflow: about 75 lifecycles with short tokens."""


def test_memory_stays_bounded_however_many_keys_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_lifecycle, "REMEMBERED_BYTES", SMALL_REGISTRY)
    # Calls are forgotten as they go (responses would hold them all), so the mock cannot
    # count them at exit: the memory figure is the check.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _token_for_every_key(rsps)
        _use_keys("warm-up", 200)
        _forget_calls(rsps)

        def measured() -> None:
            _use_keys("measured", 800)
            _forget_calls(rsps)

        grown = memory_kept_by(measured)
    # Bounded, this is about 100 kB on CPython 3.11; 800 lifecycles kept would be 0.9 MB.
    assert grown < 400_000


def test_a_live_auth_keeps_its_token_while_many_other_keys_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_lifecycle, "REMEMBERED_BYTES", SMALL_REGISTRY)
    with responses.RequestsMock() as rsps:
        _token_for_every_key(rsps)
        kept_key = "kept-key-" + secrets.token_hex(8)  # tokens are shared per key in a process
        kept = OpsNowAuth(kept_key)
        kept.get_token()
        _use_keys("passing", 300)
        kept.get_token()
        OpsNowAuth(kept_key).get_token()  # a new auth finds the live one's token
        fetched_for_kept = [
            call for call in rsps.calls if kept_key.encode() in (call.request.body or b"")
        ]
    assert len(fetched_for_kept) == 1


def test_a_thousand_tenants_each_keep_their_token_with_an_auth_built_per_call() -> None:
    # A multi-tenant service: OpsNowAuth(tenant_key) per request, round-robin. Every busy
    # tenant keeps its token (the registry is bounded by memory, not by a count of 64).
    tenants = [f"tenant-{secrets.token_hex(4)}-{n}" for n in range(1000)]
    with responses.RequestsMock() as rsps:
        _token_for_every_key(rsps)
        rsps.add(responses.GET, MOCK_API_URL, json={"status": "success"})
        for _ in range(3):
            for key in tenants:
                requests.get(MOCK_API_URL, auth=OpsNowAuth(key), timeout=10)
        token_requests = sum(1 for call in rsps.calls if call.request.method == "POST")
    assert token_requests == 1000  # one per tenant per token lifetime, not one per call


def test_a_hundred_thousand_keys_stay_within_the_registrys_memory_bound() -> None:
    now = time.time()
    token = "t" * 1000  # about a JWT's size

    def hundred_thousand_keys() -> None:
        for number in range(100_000):
            lifecycle = _lifecycle.lifecycle_for(MOCK_TOKEN_URL, f"k{number}", 300.0, None)
            lifecycle.held = _lifecycle.HeldToken(Token(token, now + 3600, now), 300.0)

    kept = memory_kept_by(hundred_thousand_keys)
    assert kept < 1.25 * _lifecycle.REMEMBERED_BYTES  # 32 MiB, not 100,000 x 3 kB (300 MB)
