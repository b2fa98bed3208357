"""The thread driver: does the lifecycle flows' effects in the calling thread
(``docs/design.md``, "Token lifecycle").

The leader flies its flight in its own thread, not in a new one (a caller may
hold locks the fetch needs: requests-mock holds one around every send); an
early refresh gets a short-lived daemon thread. Waiters wait on the flight's
latch. The watchdog stops a fetch at its flight's deadline: a read timeout
applies to each read, so a server trickling its answer could hold it forever.
"""

from __future__ import annotations

import functools
import heapq
import logging
import threading
from collections import deque
from collections.abc import Generator
from typing import Any, Callable, Protocol, TypeVar, cast

from . import _clock, _telemetry
from ._lifecycle import (
    EFFECTS,
    LIVENESS_POLL,
    Cancellation,
    Done,
    Fetch,
    Flight,
    Flow,
    Fly,
    Io,
    Wait,
)
from ._runtime import RuntimeState
from ._token import Token

log = logging.getLogger("requests_opsnow")

T = TypeVar("T")

REFRESH_THREADS = 32
"""Early refreshes run on at most this many threads at once: 2,000 keys due together with
a 3 s token endpoint are all refreshed within the 300 s margin (a caller that needs a
token before its refresh has started flies it itself)."""

WATCHDOG_EXIT = 1.0
"""Seconds the last fetch to end waits for the watchdog thread to go (it goes at once)."""


class Transport(Protocol):
    """Exchanges the key for a token, blocking (an ``OpsNowAuthError`` on failure)."""

    def __call__(self, cancellation: Cancellation) -> Token:
        """Fetch; stop early (raising) once ``cancellation`` is cancelled."""


def run(flow: Flow[T], transport: Transport) -> T:
    """Drive ``flow`` to its end in this thread; its value."""
    try:
        done = drive(flow, transport)
    finally:
        flow.close()
    return cast(T, cast(Done, done).value)


def drive(flow: Generator[Any, Any, Any], transport: Transport, reply: Any = None) -> Any:
    """Send ``reply`` into ``flow`` and do the effects it yields, until it yields something
    else (an httpx request, returned) or ends (:class:`Done`, returned)."""
    try:
        item = flow.send(reply)
        while isinstance(item, EFFECTS):
            outcome: Any = None
            try:  # each effect, the thread's way (in line: this is the cold path's spine)
                if isinstance(item, Fly) and item.flight.early:
                    _detach(item, transport)
                elif isinstance(item, Fly):
                    outcome = True  # the leader flies it itself, in its own thread
                elif isinstance(item, Wait) and not item.flight.landed:
                    _wait(item.flight)
                elif isinstance(item, Fetch):
                    outcome = fetch(item, transport)
                elif isinstance(item, Io):
                    outcome = item.call()
            except BaseException as error:  # noqa: BLE001 - the flow decides what it means
                item = flow.throw(error)
            else:
                item = flow.send(outcome)
    except StopIteration as end:
        return Done(end.value)
    return item


def _wait(flight: Flight) -> None:
    while not flight.landed:
        if flight.latch.acquire(timeout=LIVENESS_POLL):
            flight.latch.release()  # and the next waiter goes through too
        elif flight.stalled(_clock.monotonic()):
            return


def fetch(effect: Fetch, transport: Transport) -> Token:
    """A fetch under the watchdog (also for coroutines, in a worker thread, with a store)."""
    flight = effect.flight
    unwatch = _watchdog.watch(flight.deadline, flight.cancellation)
    try:
        with _telemetry.fetching(flight) as fetched:
            if effect.locked is None:
                fetched.token = transport(flight.cancellation)
            else:
                fetched.token = effect.locked(transport, flight)
        return cast(Token, fetched.token)
    finally:
        unwatch()


def _detach(effect: Fly, transport: Transport) -> None:
    """An early refresh: its flight's flow on one of the refresh threads."""
    effect.flight.queued = True
    _refreshers.submit(effect.flow, transport)


class _Refreshers(RuntimeState):
    """Up to :data:`REFRESH_THREADS` threads that run early refreshes, started while there
    are refreshes to run and gone when there are none."""

    _runtime_fields = ("_lock", "_queue", "_threads")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[Flow[None], Transport]] = deque()
        self._threads = 0

    def submit(self, flow: Flow[None], transport: Transport) -> None:
        with self._lock:
            self._queue.append((flow, transport))
            if self._threads >= REFRESH_THREADS:
                return
            self._threads += 1
        worker = threading.Thread(target=self._work, name="requests-opsnow-refresh", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no new threads at interpreter shutdown: callers fly it themselves
            with self._lock:
                self._threads -= 1
            log.debug("could not start a token refresh thread", exc_info=True)

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._threads -= 1
                    return
                flow, transport = self._queue.popleft()
            try:
                run(flow, transport)
            except Exception:  # the flight has landed with it: nobody to raise it to
                log.debug("early token refresh failed", exc_info=True)


_refreshers = _Refreshers()


class _Watchdog(RuntimeState):
    """Cancels fetches that outlive their bound, from one thread for the whole process.

    The thread runs only while a fetch is watched: the last fetch to end waits for it
    to go, so that a process that forks right after a token request (gunicorn
    ``--preload``, a fork pool) has no thread of ours.
    """

    _runtime_fields = ("_lock", "_changed", "_watched", "_thread")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._watched: list[tuple[float, int, Cancellation]] = []  # a heap by deadline
        # Its own record, not Thread.is_alive(): a signal handler that raises inside
        # is_alive() can mark a running thread as stopped (CPython).
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, cancellation: Cancellation) -> Callable[[], None]:
        """Cancel ``cancellation`` at ``deadline`` (monotonic), unless the returned
        function is called first."""
        entry = (deadline, id(cancellation), cancellation)
        with self._lock:
            heapq.heappush(self._watched, entry)
            self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="requests-opsnow-watchdog", daemon=True
                )
                try:
                    self._thread.start()
                except RuntimeError:  # no new threads at interpreter shutdown: waiters time out
                    self._thread = None
        return functools.partial(self._unwatch, entry)

    def _unwatch(self, entry: tuple[float, int, Cancellation]) -> None:
        with self._lock:
            if entry in self._watched:
                self._watched.remove(entry)
                heapq.heapify(self._watched)
            self._changed.notify()
            thread = self._thread if not self._watched else None
        if thread is not None and thread is not threading.current_thread():
            thread.join(WATCHDOG_EXIT)

    def _run(self) -> None:
        while True:
            overdue = self._next_overdue()
            if overdue is None:
                return
            overdue.cancel()

    def _next_overdue(self) -> Cancellation | None:
        """Wait for the earliest deadline to pass; None (the thread ends) once nothing is
        watched."""
        with self._lock:
            while True:
                if not self._watched:
                    self._thread = None
                    return None
                deadline, _, cancellation = self._watched[0]
                remaining = deadline - _clock.monotonic()
                if remaining <= 0:
                    heapq.heappop(self._watched)
                    return cancellation
                # Wake at least once a second: a notify can be lost to a signal handler
                # that raised in the thread calling it.
                self._changed.wait(min(remaining, 1.0))


_watchdog = _Watchdog()
