"""Helpers shared by the tests: one definition each (fixtures live in conftest.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import pytest
import requests

from requests_opsnow import OpsNowAuth
from requests_opsnow.testing import FakeOpsNow, RecordedRequest

T = TypeVar("T")

COMPANIES = "/platform/v2/companies"
"""The API path most tests call: it needs a valid token."""

MakeAuth = Callable[..., OpsNowAuth]
"""The ``make_auth`` fixture: OpsNowAuth objects pointed at the test's fake server."""


def bearer(request: RecordedRequest) -> str | None:
    """The token a recorded request carried, if any."""
    value = request.header("Authorization")
    return value.removeprefix("Bearer ") if value else None


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` (a background refresh or a server count) until true or timed out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "requests-opsnow-refresh"]


def at_once(actions: Sequence[Callable[[], T]]) -> list[T]:
    """Run each action in a thread of its own, all released at the same instant."""
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], T]) -> T:
        barrier.wait(10)
        return action()

    with ThreadPoolExecutor(max_workers=len(actions)) as pool:
        return list(pool.map(run, actions, timeout=30))


def tokens_together(auths: list[OpsNowAuth]) -> list[str]:
    """``get_token()`` on each auth, in threads released at the same instant."""
    return at_once([auth.get_token for auth in auths])


def memory_kept_by(action: Callable[[], object], ignoring: Sequence[str] = ()) -> int:
    """Bytes that ``action`` allocated and that are still held once it is done and the
    garbage is collected, not counting what code in the files ``ignoring`` allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        action()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    kept = snapshot.filter_traces([tracemalloc.Filter(False, path) for path in ignoring])
    return sum(statistic.size for statistic in kept.statistics("filename"))


def run_together(count: int, action: Callable[[], T]) -> list[T]:
    """``action`` in ``count`` threads released at the same instant."""
    return at_once([action] * count)


def rejected_in_four_processes(fake: FakeOpsNow, calls: int, **store: str) -> list[int]:
    """Four processes sharing a store (``directory=``, or ``redis_url=`` and ``prefix=``),
    each asking ``calls`` times for a token with a key the fake rejects, all at once: the
    rejections each got."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ._workers import rejected_member

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(4)
        with ProcessPoolExecutor(max_workers=4, mp_context=context) as pool:
            futures = [
                pool.submit(rejected_member, barrier, fake.base_url, calls, **store)
                for _ in range(4)
            ]
            return [future.result(timeout=60) for future in futures]


def legacy_scripts_at_once(
    fake: FakeOpsNow, token_cache: str, monkeypatch: pytest.MonkeyPatch, count: int = 8
) -> list[int]:
    """``count`` separate processes, each running ``requests.get(url, auth=OpsNowAuth())``
    configured by the environment only (with ``OPSNOW_TOKEN_CACHE=token_cache``), at once;
    the statuses they got.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ._workers import get_with_the_environments_cache

    monkeypatch.setenv("OPSNOW_API_KEY", fake.api_key)
    monkeypatch.setenv("OPSNOW_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", token_cache)
    context = multiprocessing.get_context("spawn")  # children read this environment
    with context.Manager() as manager:
        barrier = manager.Barrier(count)
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            futures = [
                pool.submit(get_with_the_environments_cache, barrier, fake.base_url + COMPANIES)
                for _ in range(count)
            ]
            return [future.result(timeout=60) for future in futures]


def get_status(auth: OpsNowAuth, url: str) -> int:
    """The status of a GET of ``url`` with ``auth``, on a session of its own."""
    with requests.Session() as session:
        return session.get(url, auth=auth, timeout=10).status_code


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


class Cli:
    """Runs ``python -m requests_opsnow`` as a real subprocess, pointed at ``fake``."""

    def __init__(self, fake: FakeOpsNow, home: Path) -> None:
        self.fake = fake
        self.cache_home = home / "xdg"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(self.cache_home),
            "OPSNOW_API_KEY": fake.api_key,
            "OPSNOW_BASE_URL": fake.base_url,
            "PYTHONPATH": os.pathsep.join(sys.path),
        }

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {**self.env, **env}
        for name, value in env.items():
            if value == "":
                environment.pop(name)
        return subprocess.run(
            [sys.executable, "-m", "requests_opsnow", *args],
            env=environment, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
