"""The token lifecycle: one token, one fetch at a time, one early refresh, per key and process.

This module knows nothing about HTTP clients. It is given a *fetch*: a
function that exchanges the key for a :class:`Token` (the requests plugin
passes one that POSTs with requests). Everything else about a token's life
happens here, under one lock, in named states (``docs/design.md``, "Token
lifecycle")::

                 fetch                  refresh_at                block_at
    (no token) --------> VALID ---------------------> DUE ---------------------> EXPIRED
        ^                  ^   one background refresh  |                          |
        |                  +---------------------------+                          |
        |                  +-------- callers block on the single fetch -----------+
        |
        +-- 401 (REJECTED: dropped, never used again) or invalidate()

- VALID: used as it is. The hot path is one attribute read and one comparison
  against ``refresh_at``.
- DUE (``refresh_margin`` before expiry): still used, and one caller starts a
  background refresh that nobody waits for.
- EXPIRED (or about to be, ``block_at``): nobody uses it; callers wait for the
  single fetch, and share its result or its error.
- REJECTED: the server answered 401 to it. It is dropped (if still current),
  never taken from a shared store again, and the next caller fetches.

Every ``OpsNowAuth`` with the same token URL, key, refresh margin and token
store shares one :class:`TokenLifecycle` (:func:`lifecycle_for`), however many
are built: an auth built per call costs a dictionary lookup, not a token request.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import heapq
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Protocol
from weakref import WeakValueDictionary

from . import _clock
from ._runtime import RuntimeState
from ._token import Token
from .cache import TokenCache, cache_key
from .errors import OpsNowAuthError, TokenRequestError

log = logging.getLogger("requests_opsnow")

MANDATORY_WINDOW = 10.0
"""A token this close to expiry is EXPIRED: callers wait for a new one. Capped at half
the (capped) refresh margin, so short-lived tokens still get a non-blocking refresh."""

EARLY_RETRY_DELAY = 5.0
"""After a failed early refresh, the next background attempt waits this long."""

REFETCH_AFTER_401_INTERVAL = 30.0
"""A token fetched because of a 401 and refused again within this many seconds is not
replaced: refused at once, it means the key may not use that path (a permission
problem), not that the token expired. The 401 is returned as it is and the token kept,
so an always-401 path costs one token request per interval, not one per call."""

REMEMBERED_LIFECYCLES = 64
"""Lifecycles kept alive after their last auth is gone, most recently used first, so
that an auth built per call finds the token of the previous call. Older ones live only
as long as an auth uses them: memory stays bounded however many keys pass through."""

WAIT_SLACK = 1.0
"""Seconds a waiter allows beyond a fetch's own bound (thread scheduling) before it
stops the fetch and gives up."""

LIVENESS_POLL = 0.25
"""A waiter checks this often that the fetch it waits for is still running."""

WATCHDOG_IDLE = 10.0
"""Seconds the watchdog thread lingers with no fetch to watch before it ends."""


class TokenState(enum.Enum):
    """Where a held token stands; see the module docstring."""

    VALID = "valid"
    DUE = "due"
    EXPIRED = "expired"


def refresh_deadlines(token: Token, refresh_margin: float) -> tuple[float, float]:
    """``(refresh_at, block_at)``: when ``token`` becomes DUE, and when EXPIRED.

    The margin is capped at half the token's lifetime, so a 10 s token is not
    refreshed on every request. The one place this arithmetic lives.
    """
    margin = min(refresh_margin, token.lifetime / 2)
    return token.expires_at - margin, token.expires_at - min(MANDATORY_WINDOW, margin / 2)


class HeldToken:
    """The token a lifecycle hands out, with its ``Authorization`` value and deadlines."""

    __slots__ = ("block_at", "header", "refresh_at", "token")

    def __init__(self, token: Token, refresh_margin: float) -> None:
        self.token = token
        self.header = f"Bearer {token.value}"
        self.refresh_at, self.block_at = refresh_deadlines(token, refresh_margin)

    def state(self, now: float) -> TokenState:
        if now < self.refresh_at:
            return TokenState.VALID
        return TokenState.DUE if now < self.block_at else TokenState.EXPIRED

    def __repr__(self) -> str:
        return f"HeldToken({self.token!r})"


class Cancellation:
    """How waiters stop a fetch that outlived its bound: it closes what the fetch registered.

    The fetch registers a callback per resource (a socket, say); ``cancel()``
    runs them, once, from whichever thread gives up waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self.cancelled = False

    def on_cancel(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return
        _quietly(callback)

    def cancel(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
            self.cancelled = True
        for callback in callbacks:
            _quietly(callback)


def _quietly(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:
        log.debug("cancelling a token request: %s failed", callback, exc_info=True)


class Fetch(Protocol):
    """Exchanges the key for a new token (raising an ``OpsNowAuthError`` on failure)."""

    @property
    def bound(self) -> float:
        """The longest one call may take, in seconds, retries included."""

    def __call__(self, cancellation: Cancellation) -> Token:
        """Fetch; stop early (raising) once ``cancellation`` is cancelled."""


class _Flight:
    """One fetch in progress. Waiters get its result, or its error raised again.

    Waiting uses a plain lock as a latch and a flag, not a ``threading.Event``:
    an exception a signal handler raises inside ``Event.wait`` can leave the
    event's inner lock held for good, and then nobody could ever set it. A C
    lock cannot be left half-taken, and waiters also read the flag every
    :data:`LIVENESS_POLL` seconds, so a lost wake-up costs at most that.
    """

    def __init__(self, *, early: bool, bound: float) -> None:
        self.early = early
        self.bound = bound
        self.created_at = _clock.monotonic()
        self.deadline = self.created_at + bound + WAIT_SLACK
        self.cancellation = Cancellation()
        self.flying = False  # the fetch is running (set by the thread that runs it)
        self.landed = False
        self._latch = threading.Lock()
        self._latch.acquire()  # released once landed
        self._held: HeldToken | None = None
        self._error: BaseException | None = None
        self._on_land: list[Callable[[], None]] = []

    def land(self, held: HeldToken | None, error: BaseException | None) -> None:
        self._held, self._error = held, error
        self.landed = True
        with contextlib.suppress(RuntimeError):  # already released
            self._latch.release()
        for callback in self._on_land:  # a list iterator also sees what is appended meanwhile
            callback()

    def on_land(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the flight has landed, in the thread that lands it.

        It may be called twice (when it is added just as the flight lands), and
        must not raise: it is how a coroutine's event loop learns of the landing.
        """
        self._on_land.append(callback)
        if self.landed:
            callback()

    def wait(self) -> HeldToken | None:
        """The result; None if the flight was interrupted or abandoned (start another).

        A fetch still running at the deadline has been stopped by the watchdog:
        ``TokenRequestError``. Nobody waits longer than the fetch's own bound.
        """
        while not self.landed:
            if self._latch.acquire(timeout=LIVENESS_POLL):
                self._latch.release()  # and the next waiter goes through too
                continue
            now = _clock.monotonic()
            if self._abandoned(now):
                return None
            if now >= self.deadline:
                self.cancellation.cancel()
                raise TokenRequestError(
                    f"no token within {self.bound:.0f} s: the token request was stopped"
                )
        if self._error is _INTERRUPTED:
            return None
        if self._error is not None:
            raise _own_copy(self._error)
        return self._held

    def _abandoned(self, now: float) -> bool:
        # Created, but nobody is running it: an exception hit the thread that was
        # about to (Ctrl-C, a signal handler, a task's time limit) in the instant
        # between creating the flight and starting the fetch.
        return not self.landed and not self.flying and now - self.created_at > LIVENESS_POLL


class Need(enum.Enum):
    """What a decision returns when it cannot answer without a token request."""

    FETCH = "fetch"


_INTERRUPTED = OpsNowAuthError("the token request was interrupted")
"""What a flight lands with when its thread was interrupted: waiters start another."""


def _own_copy(error: BaseException) -> BaseException:
    """The flight's error for one waiter: a copy, so that waiters' tracebacks do not pile up
    on one shared object (and keep every waiter's frames alive)."""
    try:
        copied = copy.copy(error)
    except Exception:  # noqa: BLE001 - an exception that cannot be rebuilt from its args
        return error
    copied.__cause__ = error.__cause__
    copied.__suppress_context__ = error.__suppress_context__
    return copied.with_traceback(None)


class TokenLifecycle(RuntimeState):
    """The token of one (token URL, key, refresh margin, store) in this process."""

    _runtime_fields = (
        "_lock", "held", "_flight", "_rejected", "_early_retry_at", "_fetched_after_401",
        "_last_401_fetch_at", "_store_failing",
    )  # fmt: skip
    _kept_across_fork = ("held", "_rejected", "_fetched_after_401", "_last_401_fetch_at")

    def __init__(self, key: str, refresh_margin: float, store: TokenCache | None) -> None:
        self.key = key  # the store's key: a digest, never the API key
        self.refresh_margin = refresh_margin
        self.store = store
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self.held: HeldToken | None = None  # read without the lock on the hot path
        self._flight: _Flight | None = None
        self._rejected: Token | None = None  # never taken from the store again
        self._early_retry_at = 0.0
        self._fetched_after_401: Token | None = None  # the token the last 401 made us fetch
        self._last_401_fetch_at = float("-inf")
        self._store_failing = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self.store!r})"

    # -- what callers ask for ---------------------------------------------------------------

    def usable(self, fetch: Fetch) -> HeldToken:
        """A token to send now: the held one unless EXPIRED; a DUE one starts a refresh."""
        held = self.held
        if held is not None:
            state = held.state(_clock.now())
            if state is TokenState.DUE:
                self._start_early_refresh(held, fetch)
            if state is not TokenState.EXPIRED:
                return held
        return self._wait_for_token(fetch)

    def fresh(self, fetch: Fetch) -> HeldToken:
        """Like :meth:`usable`, but a DUE token is replaced before returning (no thread).

        As with a background refresh, a failed refresh of a token that is still
        usable keeps it, with a warning.
        """
        held = self.held
        if held is None or held.state(_clock.now()) is TokenState.VALID:
            return self.usable(fetch)
        try:
            return self._wait_for_token(fetch, rejected=held.token)
        except Exception as error:
            if self.held is not held or held.state(_clock.now()) is TokenState.EXPIRED:
                raise
            log.warning("OpsNow token refresh failed (%s); still using the current token", error)
            return held

    def replacement_for(self, rejected: Token, fetch: Fetch) -> HeldToken | None:
        """After a 401 to ``rejected``: the token to resend with, or None not to resend.

        If another caller already replaced it, that token, without a fetch. If
        ``rejected`` is the very token a 401 made us fetch less than
        :data:`REFETCH_AFTER_401_INTERVAL` ago, None: refused at once, it points
        at a permission problem, so the token is kept and the 401 stands.
        Otherwise ``rejected`` is dropped and one new token fetched (single flight).
        """
        now = _clock.now()
        decided = self._without_fetch_after_401(rejected, now)
        if decided is not Need.FETCH:
            return decided
        self.reject(rejected)
        return self._fetched_because_of_401(self._wait_for_token(fetch, rejected=rejected), now)

    def _without_fetch_after_401(self, rejected: Token, now: float) -> HeldToken | Need | None:
        """The answer to a 401 if it needs no fetch (a replacement, or None); else Need.FETCH."""
        with self._lock:
            held = self.held
            if held is not None and held.token != rejected:
                if held.state(now) is not TokenState.EXPIRED:
                    log.debug("token already replaced by another caller; replaying with it")
                    return held
            elif (
                rejected == self._fetched_after_401
                and now - self._last_401_fetch_at < REFETCH_AFTER_401_INTERVAL
            ):
                log.debug("the token a 401 just replaced was refused too: the 401 stands")
                return None
        return Need.FETCH

    def _fetched_because_of_401(self, replacement: HeldToken, now: float) -> HeldToken:
        with self._lock:
            if replacement.token != self._fetched_after_401:
                self._fetched_after_401 = replacement.token
                self._last_401_fetch_at = now
        return replacement

    def reject(self, rejected: Token) -> None:
        """The server refused ``rejected`` (a 401): drop it here and from the store, if current."""
        if self._drop(rejected):
            self._store_delete(rejected)

    def _drop(self, rejected: Token) -> bool:
        """Forget ``rejected`` here; True if it was the held token (then the store must too)."""
        with self._lock:
            self._rejected = rejected
            dropped = self.held is not None and self.held.token == rejected
            if dropped:
                self.held = None
        if dropped:
            log.debug("server rejected the current token (401); dropping it")
        return dropped

    def invalidate(self) -> None:
        """Forget the token, here and in the store, even one this process never used."""
        with self._lock:
            held, self.held = self.held, None
            if held is not None:
                self._rejected = held.token
        token = held.token if held is not None else self._store_get()
        if token is None:
            return
        with self._lock:
            # A flight may have published the stored token while we read it.
            self._rejected = token
            published: HeldToken | None = self.held
            if published is not None and published.token == token:
                self.held = None
        self._store_delete(token)

    # -- single flight ----------------------------------------------------------------------

    def _wait_for_token(self, fetch: Fetch, rejected: Token | None = None) -> HeldToken:
        held = self._join_flight(fetch, rejected)
        if held.token == rejected:
            # A flight that read the store before the rejected token was deleted from it:
            # one more, which will not take it from the store again.
            held = self._join_flight(fetch, rejected)
        return held

    def _join_flight(self, fetch: Fetch, rejected: Token | None) -> HeldToken:
        """A usable token: the held one, or the result of the flight in progress or a new one.

        The caller that starts a flight runs the fetch (in its own thread: a
        caller may hold locks the fetch needs, as mocking libraries do around a
        send); everyone else waits for it, with a deadline.
        """
        while True:
            flight: _Flight | None = None
            leading = False
            try:
                with self._lock:
                    usable = self._usable_unless(rejected)
                    if usable is not None:
                        return usable
                    flight, leading = self._claim_flight(fetch)
                if leading:
                    self._fly(flight, fetch)
            finally:
                if leading and flight is not None and not flight.landed:
                    self._land(flight, None, _INTERRUPTED)  # between creating and running it
            answer = self._answer(flight, flight.wait())
            if answer is not None:
                return answer

    def _usable_unless(self, rejected: Token | None) -> HeldToken | None:
        """The held token if it may be sent, and is not ``rejected``. Lock held."""
        held = self.held
        if (
            held is not None
            and held.token != rejected
            and held.state(_clock.now()) is not TokenState.EXPIRED
        ):
            return held
        return None

    def _claim_flight(self, fetch: Fetch | Any) -> tuple[_Flight, bool]:
        """The flight in progress, or a new one this caller leads: ``(flight, leading)``.
        Lock held."""
        flight = self._flight
        if flight is not None and not flight.landed:
            return flight, False
        flight = self._flight = self._new_flight(fetch, early=False)
        return flight, True

    def _answer(self, flight: _Flight, result: HeldToken | None) -> HeldToken | None:
        """What a waiter makes of a flight's result: the token, or None to go round again."""
        if result is None:
            self._forget(flight)  # interrupted, or abandoned without landing: start another
            return None
        if result.token == self._rejected:
            return None  # the flight read the store just before the token was invalidated
        return result

    def _new_flight(self, fetch: Fetch | Any, *, early: bool) -> _Flight:
        return _Flight(early=early, bound=_store_wait(self.store) + fetch.bound)

    def _forget(self, flight: _Flight) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None

    def _start_early_refresh(self, held: HeldToken, fetch: Fetch) -> None:
        """Refresh a DUE token in the background; nobody waits for it."""
        flight = self._claim_early_flight(held, fetch)
        if flight is None:
            return
        worker = threading.Thread(
            target=self._fly, args=(flight, fetch), name="requests-opsnow-refresh", daemon=True
        )
        try:
            worker.start()
        except BaseException as error:  # e.g. at interpreter shutdown; expiry will block instead
            self._land(flight, None, OpsNowAuthError("could not start the token refresh thread"))
            if not isinstance(error, Exception):
                raise

    def _claim_early_flight(self, held: HeldToken, fetch: Fetch | Any) -> _Flight | None:
        """A new early-refresh flight for the DUE ``held``, unless one runs or failed just now."""
        if self._flight is not None or _clock.now() < self._early_retry_at:
            return None  # the common case while a refresh runs: no lock taken
        with self._lock:
            if (
                self._flight is not None
                or self.held is not held
                or _clock.now() < self._early_retry_at
            ):
                return None
            flight = self._flight = self._new_flight(fetch, early=True)
        return flight

    def _fly(self, flight: _Flight, fetch: Fetch) -> None:
        """Run one flight: read the store or fetch, publish, wake the waiters.

        A watchdog stops the fetch at its bound: a read timeout applies to each
        read, so a server answering one byte a second would hold it forever.
        """
        flight.flying = True
        unwatch = _watchdog.watch(flight.deadline, flight.cancellation)
        held: HeldToken | None = None
        error: BaseException | None = None
        try:
            held = HeldToken(self._from_store_or_fetch(fetch, flight), self.refresh_margin)
        except OpsNowAuthError as exc:  # the fetch failed: every waiter gets this answer
            error = exc
            if flight.early:
                log.warning(
                    "early OpsNow token refresh failed (%s); still using the current token", exc
                )
        except BaseException:
            # Not an answer but an interruption of this thread (Ctrl-C, a signal handler,
            # a task's time limit): it is this caller's alone. Waiters start a new flight.
            error = _INTERRUPTED
            raise
        finally:
            unwatch()
            flight.flying = False
            self._land(flight, held, error)

    def _land(self, flight: _Flight, held: HeldToken | None, error: BaseException | None) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
            if held is not None and held.token != self._rejected:
                self.held = held
            elif flight.early:
                self._early_retry_at = _clock.now() + EARLY_RETRY_DELAY
        flight.land(held, error if held is None else None)

    # -- the store: advisory, never fatal --------------------------------------------------------

    def _from_store_or_fetch(self, fetch: Fetch, flight: _Flight) -> Token:
        if self.store is None:
            log.debug("fetching a new OpsNow token")
            return fetch(flight.cancellation)
        with self._store_lock():
            cached = self._store_get()
            # Read after the store: a 401 elsewhere may just have rejected that very token.
            rejected = self._rejected
            if (
                cached is not None
                and cached != rejected
                and _clock.now() < refresh_deadlines(cached, self.refresh_margin)[0]
            ):
                log.debug("using the token another caller stored in %r", self.store)
                return cached
            log.debug("fetching a new OpsNow token")
            token = fetch(flight.cancellation)
            self._store_set(token)
            return token

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        assert self.store is not None
        try:
            manager = self.store.lock(self.key)
            manager.__enter__()
        except Exception as exc:  # noqa: BLE001 - a failing store means "no store", not an error
            self._store_failed(exc)
            yield
            return
        try:
            yield
        finally:
            try:
                manager.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)

    def _store_get(self) -> Token | None:
        if self.store is None:
            return None
        try:
            token = self.store.get(self.key)
        except Exception as exc:  # noqa: BLE001
            self._store_failed(exc)
            return None
        self._store_worked()
        return token if isinstance(token, Token) else None

    def _store_set(self, token: Token) -> None:
        if self.store is not None:
            try:
                self.store.set(self.key, token)
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)

    def _store_delete(self, token: Token) -> None:
        if self.store is not None:
            try:
                self.store.delete(self.key, token)
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)

    def _store_failed(self, error: Exception) -> None:
        with self._lock:
            first, self._store_failing = not self._store_failing, True
        if first:
            log.warning(
                "token store %r failed (%s); using tokens kept in this process",
                self.store,
                type(error).__name__,
            )

    def _store_worked(self) -> None:
        if self._store_failing:
            with self._lock:
                self._store_failing = False


class _Watchdog(RuntimeState):
    """Cancels fetches that outlive their bound, from one thread for the whole process.

    A read timeout applies to each read: a server that answers one byte a
    second would hold a fetch (and a single-threaded script) forever. The
    thread starts when a fetch is watched and ends after :data:`WATCHDOG_IDLE`
    seconds with nothing to watch, so an idle process has no such thread.
    """

    _runtime_fields = ("_lock", "_changed", "_watched", "_running", "_started_at")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._watched: list[tuple[float, int, Cancellation]] = []  # a heap by deadline
        self._running = False  # set by the thread itself, under the lock
        self._started_at = float("-inf")

    def watch(self, deadline: float, cancellation: Cancellation) -> Callable[[], None]:
        """Cancel ``cancellation`` at ``deadline`` (monotonic), unless the returned
        function is called first."""
        entry = (deadline, id(cancellation), cancellation)
        with self._lock:
            heapq.heappush(self._watched, entry)
            self._changed.notify()
            self._ensure_thread()
        return lambda: self._unwatch(entry)

    def _unwatch(self, entry: tuple[float, int, Cancellation]) -> None:
        with self._lock:
            if entry in self._watched:
                self._watched.remove(entry)
                heapq.heapify(self._watched)
                self._changed.notify()

    def _ensure_thread(self) -> None:
        """Start the thread unless it runs (or was started a moment ago). Lock held.

        Its own flag, not ``Thread.is_alive()``: a signal handler that raises
        inside ``is_alive()`` can mark a running thread as stopped (CPython).
        """
        now = _clock.monotonic()
        if self._running or now - self._started_at < 1.0:
            return
        self._started_at = now
        thread = threading.Thread(target=self._run, name="requests-opsnow-watchdog", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no new threads at interpreter shutdown: waiters still time out
            self._started_at = float("-inf")

    def _run(self) -> None:
        with self._lock:
            if self._running:
                return  # another watchdog thread got there first
            self._running = True
        while True:
            overdue = self._next_overdue()
            if overdue is None:
                return
            overdue.cancel()

    def _next_overdue(self) -> Cancellation | None:
        """Wait for the earliest deadline to pass; None once idle for ``WATCHDOG_IDLE`` s."""
        with self._lock:
            while True:
                if not self._watched:
                    if not self._changed.wait(WATCHDOG_IDLE) and not self._watched:
                        self._running = False
                        return None
                    continue
                deadline, _, cancellation = self._watched[0]
                remaining = deadline - _clock.monotonic()
                if remaining <= 0:
                    heapq.heappop(self._watched)
                    return cancellation
                # Wake at least once a second: a notify can be lost to a signal handler
                # that raised in the thread calling it.
                self._changed.wait(min(remaining, 1.0))


_watchdog = _Watchdog()


def _store_wait(store: TokenCache | None) -> float:
    """How long the store's lock may make a fetch wait (its ``lock_wait``, if it has one)."""
    wait = getattr(store, "lock_wait", 0.0)
    return float(wait) if isinstance(wait, (int, float)) else 0.0


class _Registry(RuntimeState):
    """Lifecycles by identity: alive while an auth uses them or among the recent ones."""

    _runtime_fields: ClassVar[tuple[str, ...]] = ("_lock", "_alive", "_recent")
    _kept_across_fork = ("_alive", "_recent")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._alive: WeakValueDictionary[Hashable, TokenLifecycle] = WeakValueDictionary()
        self._recent: OrderedDict[Hashable, TokenLifecycle] = OrderedDict()

    def get(
        self, token_url: str, api_key: str, refresh_margin: float, store: TokenCache | None
    ) -> TokenLifecycle:
        identity = (cache_key(token_url, api_key), refresh_margin, _place_of(store))
        with self._lock:
            lifecycle = self._alive.get(identity)
            if lifecycle is None:
                lifecycle = TokenLifecycle(identity[0], refresh_margin, store)
                self._alive[identity] = lifecycle
            self._recent[identity] = lifecycle
            self._recent.move_to_end(identity)
            while len(self._recent) > REMEMBERED_LIFECYCLES:
                self._recent.popitem(last=False)
        return lifecycle


def _place_of(store: TokenCache | None) -> Hashable:
    """Where a store keeps tokens. Stores that name their place (``_place``: a folder,
    say) are the same place when they name the same one, however many objects; any
    other store is a place of its own (the lifecycle holds it, so its id stays unique)."""
    if store is None:
        return None
    place = getattr(store, "_place", None)
    return place if isinstance(place, tuple) else ("object", id(store))


_registry = _Registry()


def lifecycle_for(
    token_url: str, api_key: str, refresh_margin: float, store: TokenCache | None
) -> TokenLifecycle:
    """The process's lifecycle for this token URL, key, margin and store (made if needed)."""
    return _registry.get(token_url, api_key, refresh_margin, store)
