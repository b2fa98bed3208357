"""The token lifecycle from async code (asyncio or trio, through anyio).

The same :class:`TokenLifecycle` serves threads and coroutines: one token,
one flight and one early refresh per key in a process, whichever client
asks (``docs/design.md``, "Async"). What differs is only how a coroutine
waits and fetches, so that the event loop is never blocked:

- a flight started by a coroutine runs in a task of its own, which nobody
  awaits: cancelling a waiter, even the one that started it, never cancels the
  fetch the others wait for;
- waiters await an event of their loop, which the flight sets (from
  whichever thread lands it) through the loop's thread-safe entry, and never
  wait on a thread lock; the lifecycle's own lock is taken only for a few
  instructions, never across I/O;
- the fetch goes through the async client, bounded with ``anyio.fail_after``;
  with a store, whose lock must be held by one thread across the fetch, the
  whole "lock, read, fetch, write" runs in a worker thread with the blocking fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, Callable, Protocol

from . import _clock
from ._lifecycle import (
    _INTERRUPTED,
    LIVENESS_POLL,
    Cancellation,
    Fetch,
    HeldToken,
    Need,
    TokenLifecycle,
    TokenState,
    _Flight,
)
from ._token import Token
from .errors import OpsNowAuthError, TokenRequestError

log = logging.getLogger("requests_opsnow")


class AsyncFetch(Protocol):
    """Exchanges the key for a token with an async client."""

    @property
    def bound(self) -> float:
        """The longest one call may take, in seconds, retries included."""

    @property
    def blocking(self) -> Fetch:
        """The same fetch with a blocking client, for a worker thread."""

    def __call__(self, cancellation: Cancellation) -> Awaitable[Token]: ...


async def usable(lifecycle: TokenLifecycle, fetch: AsyncFetch) -> HeldToken:
    """:meth:`TokenLifecycle.usable` for a coroutine."""
    held = lifecycle.held
    if held is not None:
        state = held.state(_clock.now())
        if state is TokenState.DUE:
            _start_early_refresh(lifecycle, held, fetch)
        if state is not TokenState.EXPIRED:
            return held
    return await _wait_for_token(lifecycle, fetch)


async def replacement_for(
    lifecycle: TokenLifecycle, rejected: Token, fetch: AsyncFetch
) -> HeldToken | None:
    """:meth:`TokenLifecycle.replacement_for` for a coroutine."""
    now = _clock.now()
    decided = lifecycle._without_fetch_after_401(rejected, now)
    if decided is not Need.FETCH:
        return decided
    await reject(lifecycle, rejected)
    replacement = await _wait_for_token(lifecycle, fetch, rejected=rejected)
    return lifecycle._fetched_because_of_401(replacement, now)


async def reject(lifecycle: TokenLifecycle, rejected: Token) -> None:
    """:meth:`TokenLifecycle.reject`, with the store's delete in a worker thread."""
    if lifecycle._drop(rejected) and lifecycle.store is not None:
        await _in_thread(lifecycle._store_delete, rejected)


async def invalidate(lifecycle: TokenLifecycle) -> None:
    """:meth:`TokenLifecycle.invalidate`, in a worker thread when there is a store to ask."""
    if lifecycle.store is None:
        lifecycle.invalidate()
    else:
        await _in_thread(lifecycle.invalidate)


async def _wait_for_token(
    lifecycle: TokenLifecycle, fetch: AsyncFetch, rejected: Token | None = None
) -> HeldToken:
    held = await _join_flight(lifecycle, fetch, rejected)
    if held.token == rejected:  # read from the store just before it was deleted there
        held = await _join_flight(lifecycle, fetch, rejected)
    return held


async def _join_flight(
    lifecycle: TokenLifecycle, fetch: AsyncFetch, rejected: Token | None
) -> HeldToken:
    while True:
        with lifecycle._lock:
            usable_now = lifecycle._usable_unless(rejected)
            if usable_now is not None:
                return usable_now
            flight, leading = lifecycle._claim_flight(fetch)
        if leading:
            _spawn(_fly, lifecycle, flight, fetch)
        answer = lifecycle._answer(flight, await _wait(flight))
        if answer is not None:
            return answer


def _start_early_refresh(lifecycle: TokenLifecycle, held: HeldToken, fetch: AsyncFetch) -> None:
    flight = lifecycle._claim_early_flight(held, fetch)
    if flight is not None:
        _spawn(_fly, lifecycle, flight, fetch)


async def _wait(flight: _Flight) -> HeldToken | None:
    """:meth:`_Flight.wait` without blocking the loop: the same checks, the same deadline."""
    import anyio

    landed, wake = _wake_up_call()
    flight.on_land(wake)
    while not flight.landed:
        with anyio.move_on_after(min(LIVENESS_POLL, flight.deadline - _clock.monotonic())):
            await landed.wait()
        now = _clock.monotonic()
        if flight._abandoned(now):
            return None
        if now >= flight.deadline and not flight.landed:
            flight.cancellation.cancel()
            raise TokenRequestError(
                f"no token within {flight.bound:.0f} s: the token request was stopped"
            )
    return flight.wait()  # landed: returns (or raises) at once


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


async def _fly(lifecycle: TokenLifecycle, flight: _Flight, fetch: AsyncFetch) -> None:
    """The flight's task: read the store or fetch, publish, wake the waiters."""
    import anyio

    flight.flying = True
    held: HeldToken | None = None
    error: BaseException | None = None
    try:
        with anyio.fail_after(flight.bound):
            token = await _from_store_or_fetch(lifecycle, fetch, flight)
        held = HeldToken(token, lifecycle.refresh_margin)
    except TimeoutError:
        flight.cancellation.cancel()
        error = TokenRequestError(f"no token within {flight.bound:.0f} s: the request was stopped")
    except OpsNowAuthError as exc:
        error = exc
        if flight.early:
            log.warning(
                "early OpsNow token refresh failed (%s); still using the current token", exc
            )
    except Exception as exc:  # noqa: BLE001 - a bug, or a client's own error
        # This task has nobody to raise to: its waiters raise it, each a copy. Landing it
        # as an interruption would make them start flight after flight, each failing alike.
        error = exc
    except BaseException:  # cancelled with its loop: waiters start a new flight
        error = _INTERRUPTED
        raise
    finally:
        flight.flying = False
        lifecycle._land(flight, held, error)


async def _from_store_or_fetch(
    lifecycle: TokenLifecycle, fetch: AsyncFetch, flight: _Flight
) -> Token:
    if lifecycle.store is None:
        log.debug("fetching a new OpsNow token")
        return await fetch(flight.cancellation)
    token: Token = await _in_thread(lifecycle._from_store_or_fetch, fetch.blocking, flight)
    return token


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    import anyio

    return await anyio.to_thread.run_sync(function, *args)


_tasks: set[Any] = set()
"""Running asyncio tasks of ours: the loop holds tasks weakly, so they are held here."""


def _spawn(function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Run ``function(*args)`` in a task nobody awaits, on asyncio or trio."""
    loop = _running_asyncio_loop()
    if loop is None:
        import trio

        trio.lowlevel.spawn_system_task(function, *args)
        return
    task: asyncio.Task[None] = loop.create_task(function(*args))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None under trio (anyio's other backend)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
