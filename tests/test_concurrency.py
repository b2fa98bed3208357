"""Threads, early refresh in the background, and fork — counted at the server."""

from __future__ import annotations

import faulthandler
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from requests_opsnow import OpsNowAuth, TokenRequestError, _runtime
from requests_opsnow._lifecycle import BACKOFF_FIRST, BACKOFF_MAX
from requests_opsnow.testing import FakeOpsNow

from .helpers import (
    COMPANIES,
    FakeClock,
    MakeAuth,
    bearer,
    get_status,
    refresh_threads,
    run_together,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

MOCK_TOKEN_URL = "https://api.opsnow360.io/platform/v2/identity/api-keys/token"


def test_32_cold_threads_make_exactly_one_token_request(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    fake.set_token_delay(0.2)  # keep the fetch in flight while the others arrive
    auth = make_auth()
    statuses = run_together(32, lambda: get_status(auth, fake.base_url + COMPANIES))
    assert statuses == [200] * 32
    assert fake.token_requests == 1
    assert {bearer(r) for r in fake.api_requests} == {fake.issued_tokens[0]}


def test_20_threads_hit_by_one_revocation_cause_exactly_one_refresh(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    auth = make_auth()
    assert get_status(auth, fake.base_url + COMPANIES) == 200
    fake.revoke_tokens()
    fake.set_token_delay(0.2)
    statuses = run_together(20, lambda: get_status(auth, fake.base_url + COMPANIES))
    assert statuses == [200] * 20
    assert fake.token_requests == 2


def test_waiters_share_the_leaders_error_and_the_first_call_after_the_window_retries(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    fake.fail_token_requests(503, count=1, delay=0.2)
    auth = make_auth(max_retries=0)

    def attempt() -> int:
        try:
            return get_status(auth, fake.base_url + COMPANIES)
        except TokenRequestError:
            return -1

    assert run_together(8, attempt) == [-1] * 8
    assert fake.token_requests == 1
    assert fake.api_requests == []
    clock.advance(BACKOFF_MAX)
    assert get_status(auth, fake.base_url + COMPANIES) == 200
    assert fake.token_requests == 2


# -- non-blocking early refresh ("Token lifecycle") -----------------------------------------


def test_nobody_waits_for_an_early_refresh_and_only_one_runs(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    auth = make_auth()
    first_token = auth.get_token()
    clock.advance(3600 - 200)  # due (margin 300 s), still valid
    fake.hold_token_requests()
    try:
        statuses = run_together(10, lambda: get_status(auth, fake.base_url + COMPANIES))
        # Every request finished while the refresh was still held at the server.
        assert statuses == [200] * 10
        assert wait_until(lambda: fake.token_requests == 2)  # the refresh reaches the server
        assert fake.issued_tokens == [first_token]
        assert {bearer(r) for r in fake.api_requests} == {first_token}
    finally:
        fake.release_token_requests()
    assert wait_until(lambda: not refresh_threads())
    assert get_status(auth, fake.base_url + COMPANIES) == 200
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[1]
    assert fake.token_requests == 2


def test_failed_early_refresh_keeps_the_valid_token_and_warns(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(max_retries=0)
    token = auth.get_token()
    clock.advance(3600 - 200)
    fake.fail_token_requests(503, count=-1)
    with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
        assert get_status(auth, fake.base_url + COMPANIES) == 200
        assert wait_until(lambda: fake.token_requests == 2 and not refresh_threads())
        assert get_status(auth, fake.base_url + COMPANIES) == 200
    assert fake.token_requests == 2  # no retry storm: the next try waits a little
    assert {bearer(r) for r in fake.api_requests} == {token}
    assert "early OpsNow token refresh failed" in caplog.text

    fake.reset()
    clock.advance(BACKOFF_FIRST + 1)
    auth.get_token()
    assert wait_until(lambda: len(fake.issued_tokens) == 2 and not refresh_threads())
    assert auth.get_token() == fake.issued_tokens[1]


def test_fresh_token_info_waits_for_the_refresh_instead_of_a_thread(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    auth = make_auth()
    old = auth.get_token()
    clock.advance(3600 - 200)
    token = auth.get_token_info(fresh=True)
    assert token.value == fake.issued_tokens[1] != old
    assert token.expires_at == pytest.approx(clock.now() + 3600)
    assert fake.token_requests == 2
    assert refresh_threads() == []


def test_no_refresh_thread_outlives_the_refresh(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    auth = make_auth()
    for _ in range(3):
        auth.get_token()
        clock.advance(3600 - 200)
        auth.get_token()
        assert wait_until(lambda: not refresh_threads())
    assert fake.token_requests == 4
    assert all(t.daemon for t in refresh_threads())


# -- fork ("Copies, pickles and forks") -----------------------------------------------------


def _child_request(auth: OpsNowAuth, url: str) -> int:
    """Run in a forked child: make one request, return an exit status."""
    try:
        return 0 if get_status(auth, url) == 200 else 1
    except BaseException:  # noqa: BLE001 - any failure is the child's exit status
        return 2


def _fork_and_wait(auth: OpsNowAuth, url: str) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(_child_request(auth, url))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_child_forked_during_a_token_fetch_makes_its_own_request(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    auth = make_auth()
    url = fake.base_url + COMPANIES
    fake.hold_token_requests()
    parent = threading.Thread(target=get_status, args=(auth, url))
    parent.start()
    try:
        assert wait_until(lambda: fake.token_requests == 1)
        # The parent thread is inside the fetch, holding the locks. The child must
        # not inherit them held; it fetches its own token once the server lets it.
        threading.Timer(0.3, fake.release_token_requests).start()
        assert _fork_and_wait(auth, url) == 0
    finally:
        fake.release_token_requests()
        parent.join(10)
    assert fake.token_requests == 2
    assert len(fake.api_requests) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_child_forked_during_a_background_refresh_still_works(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: FakeClock
) -> None:
    auth = make_auth()
    auth.get_token()
    clock.advance(3600 - 200)
    fake.hold_token_requests()
    try:
        auth.get_token()  # starts the background refresh, which the server holds
        assert wait_until(lambda: fake.token_requests == 2)
        assert _fork_and_wait(auth, fake.base_url + COMPANIES) == 0
    finally:
        fake.release_token_requests()
    assert wait_until(lambda: not refresh_threads())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_every_lock_of_the_package_is_held_still_works(
    fake: FakeOpsNow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", f"file:{tmp_path}")
    make_lock = type(threading.Lock())
    OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()  # the registries exist
    # The worst moment to fork: another thread holds every lock the package owns.
    held = [
        value
        for obj in list(_runtime._live)
        for value in (getattr(obj, name, None) for name in obj._runtime_fields)
        if isinstance(value, make_lock)
    ]
    taken, release = threading.Event(), threading.Event()

    def hold_them() -> None:
        for lock in held:
            lock.acquire()
        taken.set()
        release.wait(30)
        for lock in held:
            lock.release()

    holder = threading.Thread(target=hold_them)
    holder.start()
    try:
        assert taken.wait(10)
        assert len(held) >= 3  # the registry's, the stores', the lifecycle's at least
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            faulthandler.dump_traceback_later(10, exit=True)  # a hang fails the test
            os._exit(
                _child_request(
                    OpsNowAuth(fake.api_key, base_url=fake.base_url), fake.base_url + COMPANIES
                )
            )
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join(10)
    assert os.waitstatus_to_exitcode(status) == 0


def test_every_lock_of_the_package_is_rebuilt_in_a_forked_child() -> None:
    """No module-level lock: each lives in a RuntimeState object, rebuilt after fork."""
    import importlib
    import pkgutil

    import requests_opsnow

    lock_types = (type(threading.Lock()), type(threading.RLock()), threading.Condition)
    for info in pkgutil.iter_modules(requests_opsnow.__path__, "requests_opsnow."):
        if info.name in ("requests_opsnow.testing", "requests_opsnow.__main__"):
            continue  # the fake server is not shared across a fork; __main__ runs the CLI
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            assert not isinstance(value, lock_types), f"{info.name}.{name} is a bare lock"


# -- no thread of the package once no fetch is in progress --------------------------------------


def package_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("requests-opsnow")]


def test_no_thread_of_the_package_outlives_a_token_request(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    auth = make_auth()
    auth.get_token()
    assert package_threads() == []
    fake.revoke_tokens()
    assert get_status(auth, fake.base_url + COMPANIES) == 200  # a refetch and a replay
    assert package_threads() == []


FORK_RIGHT_AFTER_A_TOKEN = """
import os
import sys
import warnings

import responses

from requests_opsnow import OpsNowAuth

TOKEN = "https://api.opsnow360.io/platform/v2/identity/api-keys/token"
with responses.RequestsMock() as mock:
    mock.post(TOKEN, json={"data": {"accessToken": "t", "expiresIn": 3600}})
    OpsNowAuth("fork-key").get_token()
with warnings.catch_warnings(record=True) as warned:
    warnings.simplefilter("always")
    pid = os.fork()  # Python 3.12+ warns if another thread is alive
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
sys.exit("; ".join(str(warning.message) for warning in warned) or None)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_right_after_a_token_request_finds_no_thread_of_the_package() -> None:
    # gunicorn --preload, fork pools, pytest -W error: Python 3.12+ warns on a fork from
    # a process with threads (the test matters there; CI runs it on 3.13).
    result = subprocess.run(
        [sys.executable, "-c", FORK_RIGHT_AFTER_A_TOKEN],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")


def test_two_thousand_keys_due_at_once_are_refreshed_on_a_bounded_set_of_threads(
    clock: FakeClock,
) -> None:
    import responses

    from requests_opsnow._driver_sync import REFRESH_THREADS

    def token_for(request: object) -> tuple[int, dict[str, str], str]:
        time.sleep(0.002)  # a token endpoint that takes a moment
        return 200, {}, json.dumps({"data": {"accessToken": f"t-{next(serial)}"}})

    serial = itertools.count()
    most = [0]
    stop = threading.Event()

    def count_refresh_threads() -> None:
        while not stop.is_set():
            most[0] = max(most[0], len(refresh_threads()))
            time.sleep(0.001)

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, MOCK_TOKEN_URL, callback=token_for)
        auths = [OpsNowAuth(f"tenant-{n}-" + "k" * 8) for n in range(2000)]
        first = [auth.get_token() for auth in auths]
        clock.advance(3600 - 290)  # every token due (the jitter spreads them before this)
        counter = threading.Thread(target=count_refresh_threads)
        counter.start()
        try:
            assert [auth.get_token() for auth in auths] == first  # nobody waits
            assert wait_until(lambda: len(rsps.calls) == 4000, timeout=60)
            assert wait_until(lambda: not refresh_threads())
        finally:
            stop.set()
            counter.join(10)
        refreshed = [auth.get_token() for auth in auths]
    assert 1 <= most[0] <= REFRESH_THREADS
    assert len(set(refreshed)) == 2000
    assert not set(refreshed) & set(first)
