"""OpsNow auth for httpx, sync and async (asyncio and trio), on the wire against FakeOpsNow.

``docs/design.md``: "Async". One lifecycle per key whichever client asks;
nothing blocks the event loop; cancellation never strands the others.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Callable

import anyio
import httpx
import pytest
import requests
import respx

import requests_opsnow
from requests_opsnow import ReplaySkippedWarning, TokenRequestError, _driver_async
from requests_opsnow._transport_httpx import HttpxTransport
from requests_opsnow.httpx import OpsNowAuth
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, FakeClock, bearer, wait_until

pytestmark = pytest.mark.timeout(60)

MOCK = "https://api.opsnow360.io"
MOCK_TOKEN_URL = MOCK + "/platform/v2/identity/api-keys/token"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def auth_for(fake: FakeOpsNow, **options: object) -> OpsNowAuth:
    return OpsNowAuth(fake.api_key, base_url=fake.base_url, **options)  # type: ignore[arg-type]


# -- sync -------------------------------------------------------------------------------------


def test_a_sync_client_gets_and_reuses_one_token(fake: FakeOpsNow) -> None:
    with httpx.Client(auth=auth_for(fake), timeout=10) as client:
        statuses = [client.get(fake.base_url + COMPANIES).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert fake.token_requests == 1
    assert {bearer(r) for r in fake.api_requests} == {fake.issued_tokens[0]}


def test_a_sync_client_replays_once_after_a_revocation(fake: FakeOpsNow) -> None:
    with httpx.Client(auth=auth_for(fake), timeout=10) as client:
        client.get(fake.base_url + COMPANIES)
        fake.revoke_tokens()
        response = client.get(fake.base_url + COMPANIES)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert fake.token_requests == 2


# -- async ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_thousand_coroutines_on_a_cold_auth_make_one_token_request(
    fake: FakeOpsNow,
) -> None:
    fake.set_token_delay(0.2)  # the fetch is in flight while the others arrive
    auth = auth_for(fake)
    tokens: list[str] = []

    async def one() -> None:
        tokens.append(await auth.aget_token())

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(one)
    assert tokens == [fake.issued_tokens[0]] * 1000
    assert fake.token_requests == 1
    async with httpx.AsyncClient(auth=auth, timeout=10) as client:  # and requests carry it
        response = await client.get(fake.base_url + COMPANIES)
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[0]
    assert response.status_code == 200


@pytest.mark.anyio
async def test_requests_sync_and_async_httpx_share_one_token(fake: FakeOpsNow) -> None:
    url = fake.base_url + COMPANIES
    async with httpx.AsyncClient(auth=auth_for(fake), timeout=10) as client:
        assert (await client.get(url)).status_code == 200
    with httpx.Client(auth=auth_for(fake), timeout=10) as client:
        assert client.get(url).status_code == 200
    plain = requests.get(
        url, auth=requests_opsnow.OpsNowAuth(fake.api_key, base_url=fake.base_url), timeout=10
    )
    assert plain.status_code == 200
    assert fake.token_requests == 1


@pytest.mark.anyio
async def test_a_revocation_under_load_costs_one_token_request_and_no_failure(
    fake: FakeOpsNow,
) -> None:
    url = fake.base_url + COMPANIES
    statuses: list[int] = []
    async with httpx.AsyncClient(auth=auth_for(fake), timeout=30) as client:
        await client.get(url)
        fake.revoke_tokens()

        async def one() -> None:
            statuses.append((await client.get(url)).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(one)
    assert statuses == [200] * 200
    assert fake.token_requests == 2


@pytest.mark.anyio
async def test_cancelling_the_waiters_and_the_leader_mid_fetch_leaves_the_auth_usable(
    fake: FakeOpsNow,
) -> None:
    auth = auth_for(fake)
    fake.hold_token_requests()
    async with anyio.create_task_group() as group:
        for _ in range(101):  # the first to ask leads; the others wait for its fetch
            group.start_soon(auth.aget_token)
        with anyio.fail_after(10):
            while fake.token_requests == 0:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()  # every one of them, mid-fetch
    fake.release_token_requests()
    with anyio.fail_after(20):
        token = await auth.aget_token()
    assert token == fake.issued_tokens[-1]
    assert fake.token_requests == 1  # the fetch went on for whoever asks next


@pytest.mark.anyio
async def test_a_coroutine_waiting_on_a_thread_s_fetch_is_woken_when_it_lands(
    fake: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its liveness check would come only after 60 s: only the flight's wake-up,
    # sent from the thread that lands it, can end the wait within the 10 s.
    monkeypatch.setattr(_driver_async, "LIVENESS_POLL", 60.0)
    waiting = threading.Event()
    wake_up_call = _driver_async._wake_up_call

    def spied_wake_up_call() -> object:
        waiting.set()
        return wake_up_call()

    monkeypatch.setattr(_driver_async, "_wake_up_call", spied_wake_up_call)
    fake.hold_token_requests()
    threaded = requests_opsnow.OpsNowAuth(fake.api_key, base_url=fake.base_url)
    tokens: list[str] = []
    async with anyio.create_task_group() as group:
        group.start_soon(anyio.to_thread.run_sync, lambda: tokens.append(threaded.get_token()))
        await anyio.to_thread.run_sync(lambda: wait_until(lambda: fake.token_requests == 1))

        async def from_coroutine() -> None:
            tokens.append(await auth_for(fake).aget_token())

        group.start_soon(from_coroutine)
        assert await anyio.to_thread.run_sync(waiting.wait, 10)
        fake.release_token_requests()
        with anyio.fail_after(10):
            while len(tokens) < 2:
                await anyio.sleep(0.01)
    assert tokens == [fake.issued_tokens[0]] * 2
    assert fake.token_requests == 1


def test_a_ca_file_that_cannot_be_loaded_is_a_token_request_error(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    auth = auth_for(fake, verify=str(tmp_path / "missing-ca.pem"))
    with (
        httpx.Client(auth=auth, timeout=10) as client,
        pytest.raises(TokenRequestError, match="CA bundle or client certificate given") as caught,
    ):
        client.get(fake.base_url + COMPANIES)
    assert "FileNotFoundError" in str(caught.value)
    assert fake.token_requests == 0
    assert fake.api_requests == []


@pytest.mark.anyio
async def test_coroutines_get_the_error_of_a_fetch_that_cannot_start_once_each(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    # The async fetch builds its client in a task nobody awaits: its waiters must
    # get the error, not start one failing flight after another.
    auth = auth_for(fake, verify=str(tmp_path / "missing-ca.pem"))
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await auth.aget_token()
        except TokenRequestError as error:
            errors.append(error)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
    assert len(errors) == 5
    assert all("FileNotFoundError" in str(error) for error in errors)
    assert fake.token_requests == 0


@pytest.mark.anyio
async def test_a_bug_in_an_async_fetch_reaches_every_waiter_from_one_flight(
    fake: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    async def broken_fetch(*args: object) -> requests_opsnow.Token:
        calls.append(1)
        await anyio.sleep(0.05)  # the others arrive and wait for this flight
        raise RuntimeError("a bug in the fetch")

    monkeypatch.setattr(HttpxTransport, "fetch_async", broken_fetch)
    auth = auth_for(fake)
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await auth.aget_token()
        except TokenRequestError as error:  # the documented error, caused by the bug
            errors.append(error)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(one)
    assert [str(error) for error in errors] == ["the token request failed: RuntimeError"] * 5
    assert [str(error.__cause__) for error in errors] == ["a bug in the fetch"] * 5
    assert calls == [1]


# -- flights whose event loop is gone ("Async") ---------------------------------------------------


def get_in_a_loop_of_its_own(
    auth: OpsNowAuth, url: str, *, linger: Callable[[], bool] | None = None
) -> int:
    """The common sync wrapper: a new event loop per call, closed with its tasks pending
    (``linger``: it runs on until that is true, as a loop with other work would)."""
    loop = asyncio.new_event_loop()

    async def get() -> int:
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            status = (await client.get(url)).status_code
        with anyio.fail_after(5):
            while linger is not None and not linger():
                await asyncio.sleep(0.01)
        return status

    try:
        return loop.run_until_complete(get())
    finally:
        loop.close()


def test_a_refresh_stranded_on_a_closed_loop_is_replaced_on_the_next_call(
    fake: FakeOpsNow, clock: FakeClock
) -> None:
    auth = auth_for(fake)
    url = fake.base_url + COMPANIES
    assert get_in_a_loop_of_its_own(auth, url) == 200
    clock.advance(3600 - 200)  # due: the next call starts an early refresh in a task
    fake.hold_token_requests()
    try:
        # The refresh's request reaches the server; then the loop closes, the task pending.
        assert get_in_a_loop_of_its_own(auth, url, linger=lambda: fake.token_requests == 2) == 200
    finally:
        fake.release_token_requests()
    clock.advance(200)  # expired: nothing may wait for the stranded refresh
    statuses = [get_in_a_loop_of_its_own(auth, url) for _ in range(3)]
    threaded = requests_opsnow.OpsNowAuth(fake.api_key, base_url=fake.base_url)
    assert statuses == [200] * 3
    assert threaded.get_token() == fake.issued_tokens[-1]  # and a thread gets the same token
    assert fake.token_requests == 3
    assert {bearer(r) for r in fake.api_requests[-3:]} == {fake.issued_tokens[-1]}


def test_a_fetch_left_on_an_idle_loop_by_a_timed_out_caller_is_replaced(fake: FakeOpsNow) -> None:
    auth = auth_for(fake)
    loop = asyncio.new_event_loop()

    async def token_or_time_out() -> str:
        # As asyncio.wait_for(auth.aget_token(), timeout) does, once the token request is
        # at the server (however slow this machine is at getting it there).
        asking = asyncio.ensure_future(auth.aget_token())
        with anyio.fail_after(10):
            while fake.token_requests == 0:
                await asyncio.sleep(0.01)
        return await asyncio.wait_for(asking, 0.01)

    fake.hold_token_requests()
    try:
        with pytest.raises(asyncio.TimeoutError):
            loop.run_until_complete(token_or_time_out())
        fake.release_token_requests()
        # The flight's task waits on a loop nobody runs any more: a thread must not wait for it.
        token = auth.get_token()
    finally:
        fake.release_token_requests()
        loop.close()
    assert token == fake.issued_tokens[-1]
    assert fake.token_requests == 2


@pytest.mark.anyio
async def test_a_token_revoked_again_soon_after_a_replay_is_replaced_again(
    fake: FakeOpsNow,
) -> None:
    async with httpx.AsyncClient(auth=auth_for(fake), timeout=10) as client:
        await client.get(fake.base_url + COMPANIES)
        for _ in range(2):
            fake.revoke_tokens()
            response = await client.get(fake.base_url + COMPANIES)
            assert response.status_code == 200
            assert [r.status_code for r in response.history] == [401]
    assert fake.token_requests == 3


@pytest.mark.anyio
async def test_an_always_401_path_costs_one_refetch_not_one_per_call(fake: FakeOpsNow) -> None:
    async with httpx.AsyncClient(auth=auth_for(fake), timeout=10) as client:
        for _ in range(10):
            response = await client.get(fake.base_url + "/test/status/401")
            assert response.status_code == 401
    assert fake.token_requests == 2


@pytest.mark.anyio
async def test_a_streaming_body_is_not_resent_and_its_dead_token_is_dropped(
    fake: FakeOpsNow,
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"chunk-1;"
        yield b"chunk-2;"

    async with httpx.AsyncClient(auth=auth_for(fake), timeout=10) as client:
        await client.get(fake.base_url + COMPANIES)
        fake.revoke_tokens()
        with pytest.warns(ReplaySkippedWarning, match="stream"):
            rejected = await client.post(fake.base_url + "/test/echo", content=body())
        again = await client.post(fake.base_url + "/test/echo", content=body())
    assert rejected.status_code == 401
    assert again.status_code == 200
    assert fake.token_requests == 2


@pytest.mark.anyio
async def test_a_redirect_to_another_origin_never_gets_the_token(
    fake: FakeOpsNow, other_host: FakeOpsNow
) -> None:
    target = other_host.base_url + COMPANIES  # answers 401 without its own token
    async with httpx.AsyncClient(auth=auth_for(fake), timeout=10, follow_redirects=True) as client:
        response = await client.get(fake.base_url + "/test/redirect", params={"to": target})
    assert response.status_code == 401
    assert [bearer(r) for r in other_host.api_requests] == [None]
    assert fake.token_requests == 1  # no refresh for someone else's 401


@pytest.mark.anyio
async def test_the_opsnow_fake_fixture_serves_async_tests(opsnow_fake: FakeOpsNow) -> None:
    async with httpx.AsyncClient(auth=auth_for(opsnow_fake), timeout=10) as client:
        response = await client.get(opsnow_fake.base_url + COMPANIES)
    assert response.json()["data"]["companies"]
    assert opsnow_fake.token_requests == 1


@pytest.mark.anyio
async def test_a_slow_token_endpoint_is_cut_off_for_async_callers(fake: FakeOpsNow) -> None:
    # A byte every half second never trips the 1.5 s read timeout: only the bound stops it.
    fake.fail_token_requests(200, count=-1, trickle=0.5)
    auth = auth_for(fake, timeout=(1, 1.5), max_retries=0)
    with anyio.fail_after(10), pytest.raises(TokenRequestError, match="no token within"):
        await auth.aget_token()
    assert fake.token_requests == 1


def test_import_requests_opsnow_loads_no_optional_or_heavy_module() -> None:
    import subprocess
    import sys

    # httpx, Redis, the keyring, OpenTelemetry only when used; subprocess (2 ms) and the
    # config parser only for a key file or a profile; filelock only for a file store.
    optional = ("httpx", "anyio", "redis", "keyring", "opentelemetry", "subprocess",
                "configparser", "filelock")  # fmt: skip
    probe = f"import sys, requests_opsnow; print([m for m in {optional!r} if m in sys.modules])"
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert output.stdout.strip() == "[]"


# -- unit tests with respx ------------------------------------------------------------------


@pytest.fixture
def key() -> str:
    return "mock-key-" + secrets.token_hex(8)  # tokens are shared per key in a process


def _token(value: str) -> httpx.Response:
    return httpx.Response(
        200, json={"status": "success", "data": {"accessToken": value, "expiresIn": 3600}}
    )


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=True) as router:
        yield router


def test_respx_call_log_keeps_the_token_each_request_was_sent_with(
    mock: respx.MockRouter, key: str
) -> None:
    mock.post(MOCK_TOKEN_URL).mock(side_effect=[_token("first"), _token("second")])
    mock.get(MOCK + COMPANIES).mock(
        side_effect=[httpx.Response(401), httpx.Response(200, json={"status": "success"})]
    )
    with httpx.Client(auth=OpsNowAuth(key)) as client:
        response = client.get(MOCK + COMPANIES)
    sent = [call.request.headers.get("Authorization") for call in mock.calls]
    assert response.status_code == 200
    assert sent == [None, "Bearer first", None, "Bearer second"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, "InvalidApiKeyError"), (503, "TokenRequestError"), (200, "TokenResponseError")],
)
def test_token_endpoint_failures_map_to_the_documented_errors(
    mock: respx.MockRouter, key: str, status: int, error: str
) -> None:
    mock.post(MOCK_TOKEN_URL).mock(return_value=httpx.Response(status, text="not a token"))
    auth = OpsNowAuth(key, max_retries=0)
    with pytest.raises(getattr(requests_opsnow, error)) as caught:
        auth.get_token()
    assert key not in str(caught.value)


def test_the_token_request_is_a_json_post_that_no_cache_keeps(
    mock: respx.MockRouter, key: str
) -> None:
    route = mock.post(MOCK_TOKEN_URL).mock(return_value=_token("t"))
    OpsNowAuth(key).get_token()
    request = route.calls.last.request
    assert request.headers["Cache-Control"] == "no-store"
    assert request.headers["Content-Type"] == "application/json"
    assert b'"apiKey"' in request.content


def test_a_compressed_bomb_is_refused_after_a_step(mock: respx.MockRouter, key: str) -> None:
    import gzip

    bomb = gzip.compress(b'{"accessToken": "' + b"a" * 20_000_000 + b'"}')
    mock.post(MOCK_TOKEN_URL).mock(
        return_value=httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"})
    )
    with pytest.raises(requests_opsnow.TokenResponseError, match="larger than"):
        OpsNowAuth(key, max_retries=0).get_token()


def test_hosts_that_are_not_ours_get_nothing(mock: respx.MockRouter, key: str) -> None:
    route = mock.get("https://elsewhere.example/x").mock(return_value=httpx.Response(200))
    with httpx.Client(auth=OpsNowAuth(key)) as client:
        client.get("https://elsewhere.example/x")
    assert "Authorization" not in route.calls.last.request.headers
    assert wait_until(lambda: True)
