"""The one place that reads the clock and sleeps.

Tests move time by patching :data:`now` and :data:`sleep` here instead of
sleeping; package code always calls them through this module
(``_clock.now()``). They are the standard library's own functions, not
wrappers: the hot path pays for no extra call. Times are wall-clock epoch
seconds so that a token expiry means the same thing in every process that
shares a cache.
"""

from __future__ import annotations

import time

now = time.time
"""Current wall-clock time in epoch seconds."""

monotonic = time.monotonic
"""Seconds on a clock that never jumps: for deadlines within this process."""

sleep = time.sleep
"""Sleep; patched by tests that simulate waits."""


async def sleep_async(seconds: float) -> None:
    """Sleep without blocking the event loop (asyncio or trio); patched like :data:`sleep`."""
    import anyio  # only async clients (httpx) need it, and httpx brings it

    await anyio.sleep(seconds)
