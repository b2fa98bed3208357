"""Shared fixtures: a clean environment, fake servers, auth factory, a movable clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import requests

from requests_opsnow import OpsNowAuth, _clock
from requests_opsnow.testing import FakeOpsNow

OTHER_HOST = "127.0.0.2"


@pytest.fixture(autouse=True)
def _clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No OPSNOW_* leaks in from the machine; caches write only under a temp dir."""
    for name in ("OPSNOW_API_KEY", "OPSNOW_BASE_URL", "OPSNOW_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeOpsNow]:
    with FakeOpsNow() as server:
        yield server


@pytest.fixture
def other_host() -> Iterator[FakeOpsNow]:
    """A second server on another loopback address: the "foreign origin"."""
    with FakeOpsNow(host=OTHER_HOST) as server:
        yield server


@pytest.fixture
def make_auth(fake: FakeOpsNow) -> Iterator[Callable[..., OpsNowAuth]]:
    """Build OpsNowAuth objects pointed at ``fake``; their sessions are closed after the test."""
    made: list[OpsNowAuth] = []

    def factory(**options: Any) -> OpsNowAuth:
        options.setdefault("base_url", fake.base_url)
        api_key = options.pop("api_key", fake.api_key)
        auth = OpsNowAuth(api_key, **options)
        made.append(auth)
        return auth

    yield factory
    for auth in made:
        auth.close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


class FakeClock:
    """Wall-clock time that only moves when a test says so; sleeping advances it."""

    def __init__(self, start: float) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake_clock = FakeClock(_clock.now())
    monkeypatch.setattr(_clock, "now", fake_clock.now)
    monkeypatch.setattr(_clock, "sleep", fake_clock.sleep)
    return fake_clock


def tokens_together(auths: list[OpsNowAuth]) -> list[str]:
    """``get_token()`` on each auth, in threads released at the same instant."""
    barrier = threading.Barrier(len(auths))

    def one(auth: OpsNowAuth) -> str:
        barrier.wait(10)
        return auth.get_token()

    with ThreadPoolExecutor(max_workers=len(auths)) as pool:
        return list(pool.map(one, auths, timeout=30))
