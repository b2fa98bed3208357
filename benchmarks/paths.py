"""How far a request travels through the package: ``python benchmarks/paths.py``.

For each path (a cold request, a 401 answered by one fetch and one replay, on
requests and on httpx's async client) it counts the package functions entered
(in every thread; a generator or coroutine resumed is not entered again) and
the crossings between package modules: consecutive entries, in one thread,
into functions of two different modules. The fake server's own modules
(``testing``, ``_loopback``) are not counted. The counts are the same on any
machine for the same code and libraries: they measure structure, not speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import httpx
import requests

import requests_opsnow
from requests_opsnow import OpsNowAuth
from requests_opsnow.httpx import OpsNowAuth as HttpxOpsNowAuth
from requests_opsnow.testing import FakeOpsNow

PACKAGE = Path(requests_opsnow.__file__).resolve().parent
NOT_COUNTED = {"testing", "_loopback"}
TIMEOUT = 10.0
COMPANIES = "/platform/v2/companies"


class Trace:
    """The package functions entered, in order, per thread."""

    def __init__(self) -> None:
        self.entries: dict[int, list[tuple[str, str]]] = {}
        self._frames: dict[int, FrameType] = {}  # kept alive, so their ids stay unique
        self._lock = threading.Lock()

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if path.parent != PACKAGE or path.stem in NOT_COUNTED:
            return
        with self._lock:
            if id(frame) in self._frames:  # a generator or coroutine resumed
                return
            self._frames[id(frame)] = frame
            entries = self.entries.setdefault(threading.get_ident(), [])
        entries.append((path.stem, frame.f_code.co_name))

    @property
    def calls(self) -> int:
        return sum(len(entries) for entries in self.entries.values())

    @property
    def crossings(self) -> int:
        return sum(
            sum(1 for before, after in zip(entries, entries[1:]) if before[0] != after[0])
            for entries in self.entries.values()
        )

    def listing(self) -> str:
        lines = []
        for thread, entries in enumerate(self.entries.values()):
            groups: list[tuple[str, list[str]]] = []
            for module, name in entries:
                if groups and groups[-1][0] == module:
                    groups[-1][1].append(name)
                else:
                    groups.append((module, [name]))
            lines.append(f"  thread {thread}:")
            for module, names in groups:
                counted = Counter(names)
                text = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counted.items())
                lines.append(f"    {module}: {text}")
        return "\n".join(lines)


@contextmanager
def traced() -> Iterator[Trace]:
    trace = Trace()
    threading.setprofile(trace.profile)
    sys.setprofile(trace.profile)
    try:
        yield trace
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def requests_cold(fake: FakeOpsNow) -> Callable[[], object]:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    return lambda: requests.get(fake.base_url + COMPANIES, auth=auth, timeout=TIMEOUT)


def requests_401(fake: FakeOpsNow) -> Callable[[], object]:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    requests.get(fake.base_url + COMPANIES, auth=auth, timeout=TIMEOUT)
    fake.revoke_tokens()
    return lambda: requests.get(fake.base_url + COMPANIES, auth=auth, timeout=TIMEOUT)


def httpx_async(fake: FakeOpsNow, *, revoked: bool) -> Callable[[], object]:
    auth = HttpxOpsNowAuth(fake.api_key, base_url=fake.base_url)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(auth=auth, timeout=TIMEOUT)

    async def get() -> httpx.Response:
        return await client.get(fake.base_url + COMPANIES)

    if revoked:
        loop.run_until_complete(get())
        fake.revoke_tokens()

    def run() -> object:
        try:
            return loop.run_until_complete(get())
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()

    return run


PATHS: dict[str, Callable[[FakeOpsNow], Callable[[], object]]] = {
    "requests, cold": requests_cold,
    "requests, 401 -> one fetch -> replay": requests_401,
    "httpx async, cold": lambda fake: httpx_async(fake, revoked=False),
    "httpx async, 401 -> one fetch -> replay": lambda fake: httpx_async(fake, revoked=True),
}


def measure(name: str) -> Trace:
    with FakeOpsNow() as fake:  # a new key each time: no token in the process yet
        run = PATHS[name](fake)
        with traced() as trace:
            run()
        assert fake.token_requests == (1 if "cold" in name else 2), fake.token_requests
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="also list the functions entered")
    args = parser.parse_args()
    for name in PATHS:
        trace = measure(name)
        print(f"{name}: {trace.calls} package functions, {trace.crossings} crossings")
        if args.list:
            print(trace.listing())


if __name__ == "__main__":
    main()
