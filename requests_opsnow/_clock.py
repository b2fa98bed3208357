"""The one place that reads the clock and sleeps.

Tests move time by patching :func:`now` and :func:`sleep` here instead of
sleeping. Times are wall-clock epoch seconds so that a token expiry means the
same thing in every process that shares a cache.
"""

from __future__ import annotations

import time


def now() -> float:
    """Current wall-clock time in epoch seconds."""
    return time.time()


def monotonic() -> float:
    """Seconds on a clock that never jumps: for deadlines within this process."""
    return time.monotonic()


def sleep(seconds: float) -> None:
    """Sleep; patched by tests that simulate waits."""
    time.sleep(seconds)


async def sleep_async(seconds: float) -> None:
    """Sleep without blocking the event loop (asyncio or trio); patched like :func:`sleep`."""
    import anyio  # only async clients (httpx) need it, and httpx brings it

    await anyio.sleep(seconds)
