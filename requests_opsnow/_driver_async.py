"""The coroutine driver (anyio: asyncio or trio): does the lifecycle flows' effects without
ever blocking the event loop (``docs/design.md``, "Token lifecycle" and "Async").

A flight runs in a task nobody awaits, so cancelling a waiter (even the one that
started it) never cancels the fetch; on asyncio the flight learns whether its
loop still runs, so one stranded on a closed or stopped loop is retired, not
waited for. Waiters await an event of their own loop, set from whichever thread
lands the flight. A store's "lock, read, fetch, write" is the thread driver's,
in a worker thread: one thread must hold the store's lock across the fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any, Callable, Protocol, TypeVar, cast

from . import _clock, _driver_sync, _telemetry
from ._lifecycle import (
    EFFECTS,
    LIVENESS_POLL,
    Cancellation,
    Done,
    Effect,
    Fetch,
    Flight,
    Flow,
    Fly,
    Wait,
)
from ._token import Token

log = logging.getLogger("requests_opsnow")

T = TypeVar("T")


class AsyncTransport(_driver_sync.Transport, Protocol):
    """A transport that can also fetch from a coroutine."""

    async def fetch_async(self, cancellation: Cancellation) -> Token:
        """Fetch without blocking the event loop."""


async def run(flow: Flow[T], transport: AsyncTransport) -> T:
    """Drive ``flow`` to its end from a coroutine; its value."""
    try:
        done = await drive(flow, transport)
    finally:
        flow.close()
    return cast(T, cast(Done, done).value)


async def drive(
    flow: Generator[Any, Any, Any], transport: AsyncTransport, reply: Any = None
) -> Any:
    """:func:`_driver_sync.drive` for a coroutine (a coroutine cannot let StopIteration
    out, hence :class:`Done`)."""
    try:
        item = flow.send(reply)
        while isinstance(item, EFFECTS):
            try:
                outcome = await _do(item, transport)
            except BaseException as error:  # noqa: BLE001 - the flow decides what it means
                item = flow.throw(error)
            else:
                item = flow.send(outcome)
    except StopIteration as end:
        return Done(end.value)
    return item


async def _do(effect: Effect, transport: AsyncTransport) -> Any:
    import anyio

    if isinstance(effect, Wait):
        return await _wait(effect.flight)
    if isinstance(effect, Fetch):
        return await _fetch(effect, transport)
    if isinstance(effect, Fly):
        return _spawn(effect, transport)
    return await anyio.to_thread.run_sync(effect.call)


async def _wait(flight: Flight) -> None:
    import anyio

    landed, wake = _wake_up_call()
    flight.on_land(wake)
    while not flight.landed and not flight.stalled(_clock.monotonic()):
        with anyio.move_on_after(LIVENESS_POLL):
            await landed.wait()


async def _fetch(effect: Fetch, transport: AsyncTransport) -> Token:
    import anyio

    flight = effect.flight
    if effect.locked is not None:
        token: Token = await anyio.to_thread.run_sync(_driver_sync.fetch, effect, transport)
        return token
    with _telemetry.fetching(flight) as fetched:
        with anyio.move_on_after(flight.bound):
            fetched.token = await transport.fetch_async(flight.cancellation)
        if fetched.token is None:
            flight.cancellation.cancel()
            raise flight.stopped()
        return cast(Token, fetched.token)


def _wake_up_call() -> tuple[Any, Callable[[], None]]:
    """An ``anyio.Event`` of the running loop, and a function any thread may call to set it."""
    import anyio

    event = anyio.Event()
    loop = _running_asyncio_loop()
    if loop is not None:

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to wake
                loop.call_soon_threadsafe(event.set)

        return event, wake
    import trio

    trio_token = trio.lowlevel.current_trio_token()

    def wake_trio() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio_token.run_sync_soon(event.set)

    return event, wake_trio


_tasks: set[Any] = set()
"""Running asyncio tasks of ours: the loop holds tasks weakly, so they are held here."""


def _spawn(effect: Fly, transport: AsyncTransport) -> None:
    loop = _running_asyncio_loop()
    if loop is None:  # trio ends its system tasks with its run: they land as interrupted
        import trio

        trio.lowlevel.spawn_system_task(_unattended, effect.flow, transport)
        return
    task = loop.create_task(_unattended(effect.flow, transport))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    flight = effect.flight
    flight.runner_alive = lambda: loop.is_running() and not loop.is_closed()
    flight.on_land(lambda: _tasks.discard(task))  # abandoned on a dead loop: not kept forever


async def _unattended(flow: Flow[None], transport: AsyncTransport) -> None:
    try:
        await run(flow, transport)
    except Exception:  # the flight has landed with it: nobody to raise it to
        log.debug("token request task failed", exc_info=True)


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None under trio (anyio's other backend)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
