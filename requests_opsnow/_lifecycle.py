"""The token lifecycle: one token, one fetch at a time, one early refresh, per key and process.

Every rule of a token's life is written here once, as a *flow*: a generator
that yields what it needs done (:class:`Fly`, :class:`Wait`, :class:`Fetch`,
:class:`Io`) and is sent back the outcome. This module knows nothing about HTTP
clients, threads or event loops: the thread driver (``_driver_sync``) and the
coroutine driver (``_driver_async``) do the effects. The states, the flows and
the effects: ``docs/design.md``, "Token lifecycle". The hot path (a VALID
token) is no flow at all: ``held`` and one comparison.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Generator, Hashable, Iterator
from functools import partial
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar, Union
from urllib.parse import urlsplit
from weakref import WeakValueDictionary

from . import _clock, _telemetry
from ._protocol import BOUND_SETTINGS, LONGEST_RETRY_AFTER, full_jitter, retry_after
from ._runtime import RuntimeState
from ._telemetry import Flown
from ._token import Token, TokenInfo
from .cache import TokenCache, cache_key
from .errors import InvalidApiKeyError, OpsNowAuthError, TokenRequestError, TokenResponseError

log = logging.getLogger("requests_opsnow")

REFRESH_JITTER = 0.2
"""A token falls due up to this fraction of the refresh margin earlier than the margin
says, at random: 2,000 tokens fetched at once fall due over a minute, not at once."""

MANDATORY_WINDOW = 10.0
"""A token this close to expiry is EXPIRED: callers wait for a new one. Capped at half
the (capped) refresh margin, so short-lived tokens still get a non-blocking refresh."""

BACKOFF_FIRST = 2.0
"""After a token request fails, no new one for a window of up to this many seconds (full
jitter: a random time between 0 and it), doubling with each failure in a row..."""

BACKOFF_MAX = 60.0
"""...up to this many seconds..."""

BACKOFF_MIN = 1.0
"""...and never less than this (nor less than the server's ``Retry-After``). Callers in
the window get the failure again at once; a valid token is used throughout."""

REJECTED_KEY_BACKOFF = 60.0
"""After the key is rejected (``InvalidApiKeyError``), no token request for this long."""

LONGEST_BACKOFF = max(BACKOFF_MAX, REJECTED_KEY_BACKOFF, LONGEST_RETRY_AFTER)
"""No window is longer. A store's record of one that ends later is not ours (outside data:
anyone who can write to a shared Redis can write there): it reads as absent."""

REFETCH_AFTER_401_INTERVAL = 30.0
"""A request whose replay (with the token fetched after its 401) is refused too means
that the key may not use that route (method and URL): for this many seconds, that
route's 401 is returned at once, without a token request, while other routes keep the
token. An always-401 route costs one token request per interval, not one per call."""

REMEMBERED_REFUSALS = 64
"""Routes remembered as refused (above), most recent first, per lifecycle."""

REMEMBERED_BYTES = 32 * 1024 * 1024
"""Lifecycles are kept alive after their last auth is gone, most recently used first, up
to about this much memory, so that an auth built per call finds the token of the previous
call: some 9,800 keys with tokens of a JWT's size. Older ones live only as long as an auth
uses them: memory stays bounded however many keys pass through."""

LIFECYCLE_BYTES = 1024
"""A lifecycle's size, less its token's (measured: 850 bytes; the token and its header
add twice the token's length)."""

JWT_LENGTH = 1200
"""The token length a lifecycle is weighed with before its token arrives (a JWT's)."""

WAIT_SLACK = 1.0
"""Seconds a waiter allows beyond a fetch's own bound (thread scheduling) before it
stops the fetch and gives up."""

LIVENESS_POLL = 0.25
"""A waiter checks this often that the flight it waits for has not stalled; a flight
nobody has started this long after it was created is abandoned."""

T = TypeVar("T")


class TokenState(enum.Enum):
    """Where a held token stands; see the module docstring."""

    VALID = "valid"
    DUE = "due"
    EXPIRED = "expired"


def refresh_deadlines(
    token: Token, refresh_margin: float, jitter: float = 0.0
) -> tuple[float, float]:
    """``(refresh_at, block_at)``: when ``token`` becomes DUE, and when EXPIRED.

    The margin is capped at half the token's lifetime, so a 10 s token is not
    refreshed on every request; ``jitter`` (0 to 1) widens it by up to
    :data:`REFRESH_JITTER`, so that tokens fetched together do not fall due
    together. The one place this arithmetic lives.
    """
    widened = refresh_margin * (1 + REFRESH_JITTER * jitter)
    margin = min(widened, (token.expires_at - token.issued_at) / 2)
    return token.expires_at - margin, token.expires_at - min(MANDATORY_WINDOW, margin / 2)


class HeldToken:
    """The token a lifecycle hands out, with its ``Authorization`` value and deadlines."""

    __slots__ = ("block_at", "header", "refresh_at", "source", "token")

    def __init__(self, token: Token, refresh_margin: float, source: str = "network") -> None:
        self.token = token
        self.source = source  # network, or the store it was read from
        self.header = f"Bearer {token.value}"
        self.refresh_at, self.block_at = refresh_deadlines(token, refresh_margin, random.random())

    def state(self, now: float) -> TokenState:
        if now < self.refresh_at:
            return TokenState.VALID
        return TokenState.DUE if now < self.block_at else TokenState.EXPIRED

    def __repr__(self) -> str:
        return f"HeldToken({self.token!r})"


class Cancellation:
    """How a fetch that outlived its bound is stopped: it closes what the fetch registered.

    The fetch registers a callback per resource (a socket, a client);
    ``cancel()`` runs them, once, from whichever thread gives up waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self.cancelled = False
        self.attempts = 0  # HTTP attempts the fetch made (the transport counts them)

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


class Flight:
    """One token request, in the air until it lands with a token or an error.

    It lands once (the first landing wins), under its lifecycle's lock, then
    wakes its waiters: threads wait on ``latch``, a plain lock used as a latch
    (not a ``threading.Event``, whose inner lock an exception a signal handler
    raises can leave held for good); coroutines on a callback given to
    :meth:`on_land`. Whoever runs it sets ``started``; a coroutine driver also
    sets ``runner_alive`` (its event loop still runs).
    """

    def __init__(self, bound: float, about: Flown, *, early: bool) -> None:
        self.bound = bound
        self.about = about  # for its span and event: the key's id, the server, the trigger
        self.source = "network"  # or the store that had the token
        self.early = early
        self.created_at = _clock.monotonic()
        self.deadline = self.created_at + bound + WAIT_SLACK
        self.cancellation = Cancellation()
        self.started = False  # whoever runs it (see TokenLifecycle._fly), from when it does
        self.queued = False  # a driver will run it (an early refresh waiting for a thread)
        self.runner_alive: Callable[[], bool] | None = None
        self.landed = False
        self.held: HeldToken | None = None
        self.error: BaseException | None = None
        self.latch = threading.Lock()
        self.latch.acquire()  # released once landed
        self._on_land: list[Callable[[], None]] = []

    def on_land(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the flight has landed, in the thread that lands it.

        It may be called twice (when it is added just as the flight lands), and
        must not raise: it is how an event loop learns of the landing.
        """
        self._on_land.append(callback)
        if self.landed:
            callback()

    def stalled(self, now: float) -> bool:
        """Whether waiting on is pointless: past its deadline, or nobody runs it (never
        started, or its event loop is closed or stopped)."""
        if self.landed:
            return False
        if not self.started:
            return not self.queued and now - self.created_at > LIVENESS_POLL
        if now >= self.deadline:
            return True
        alive = self.runner_alive
        return alive is not None and not alive()

    def stopped(self) -> TokenRequestError:
        """The error of a flight stopped at its deadline."""
        return TokenRequestError(
            f"no token within {self.bound:.0f} s: the token request was stopped ({BOUND_SETTINGS})"
        )

    def result(self) -> HeldToken | None:
        """A landed flight's token; None if it was interrupted; its error (a copy) raised."""
        if self.error is _INTERRUPTED:
            return None
        if self.error is not None:
            raise _own_copy(self.error)
        return self.held

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released
            self.latch.release()
        for callback in self._on_land:  # a list iterator also sees what is appended meanwhile
            callback()


_INTERRUPTED = OpsNowAuthError("the token request was interrupted")
"""What a flight lands with when whoever ran it was interrupted, or nobody did: its
waiters start another."""


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


def _failed(error: Exception) -> TokenRequestError:
    """What the waiters of a flight get when its fetch raised something other than an
    ``OpsNowAuthError`` (a bug, a client's own error, an exception a signal handler
    raised in the leader): the documented error, caused by it."""
    failure = TokenRequestError(f"the token request failed: {type(error).__name__}")
    failure.__cause__ = error
    return failure


def _backoff_until(error: BaseException, failures: int) -> float:
    """When the backoff window after the ``failures``-th failed flight in a row ends."""
    if isinstance(error, InvalidApiKeyError):
        window = REJECTED_KEY_BACKOFF
    else:
        window = max(BACKOFF_MIN, full_jitter(BACKOFF_FIRST, BACKOFF_MAX, failures - 1))
    response = getattr(error, "response", None)
    asked = retry_after(response.headers) if response is not None else None
    return _clock.now() + max(window, asked or 0.0)


_UNTIL = "_opsnow_backoff_until"
"""Set on an error whose backoff window is already decided (recorded in the store)."""

_RECORDED_ERRORS = {kind.__name__: kind for kind in (InvalidApiKeyError, TokenResponseError)}


def _recorded(until: float, kind: str, message: str) -> OpsNowAuthError:
    """The error of a backoff window another process or host recorded in the store."""
    error: OpsNowAuthError = _RECORDED_ERRORS.get(kind, TokenRequestError)(
        f"{message} (recorded in the store)"
    )
    vars(error)[_UNTIL] = until  # the window it ends with
    return error


def _in_window(error: BaseException, remaining: float) -> BaseException:
    """The error that ended the last flight, for a caller in the backoff window after it:
    of the same class, saying when the next token request will be."""
    message = f"{error} (no new token request for {remaining:.0f} s: backing off)"
    again = _own_copy(error)
    if again is error:  # it could not be copied
        again = TokenRequestError(message)
        again.__cause__ = error
    again.args = (message,)
    return again


# -- effects: what a flow asks its driver to do ---------------------------------------------------

FetchFunction = Callable[[Cancellation], Token]
"""A transport's blocking fetch: exchanges the key for a token, or raises."""


class Fly(NamedTuple):
    """Get ``flight`` flown: send back True to have the flow run ``flow`` (the flight's
    own) in place; or run ``flow`` elsewhere and send back None."""

    flight: Flight
    flow: Generator[Effect, Any, None]


class Wait(NamedTuple):
    """Until ``flight`` lands or :meth:`Flight.stalled`. Sends back None."""

    flight: Flight


class Fetch(NamedTuple):
    """Exchange the key for a token within ``flight``'s bound; sends back the token.

    With a store, ``locked(fetch, flight)`` wraps a blocking fetch in "lock, read,
    else fetch and write": one thread must hold the store's lock across it.
    """

    flight: Flight
    locked: Callable[[FetchFunction, Flight], Token] | None


class Io(NamedTuple):
    """A blocking call (a store's, a key source's); sends back what it returned."""

    call: Callable[[], Any]


class Done(NamedTuple):
    """What a driver's ``drive`` returns when the flow has ended: its value."""

    value: Any


Effect = Union[Fly, Wait, Fetch, Io]
EFFECTS = (Fly, Wait, Fetch, Io)
Flow = Generator[Effect, Any, T]


class TokenLifecycle(RuntimeState):
    """The token of one (token URL, key, refresh margin, store) in this process."""

    _runtime_fields = (
        "_lock", "held", "_flight", "_rejected", "_refused", "_store_failing", "_failures",
        "_backoff_until", "_backoff_error", "_vacated",
    )  # fmt: skip
    _kept_across_fork = (
        "held", "_rejected", "_refused", "_failures", "_backoff_until", "_backoff_error",
    )  # fmt: skip

    def __init__(
        self, key: str, refresh_margin: float, store: TokenCache | None, server: str = ""
    ) -> None:
        self.key = key  # the store's key: a digest, never the API key
        self.server = server  # the token URL's host, for spans and events
        self.refresh_margin = refresh_margin
        self.store = store
        # How long the store's lock may make a fetch wait (its lock_wait, if it has one).
        wait = getattr(store, "lock_wait", 0.0)
        self._store_wait = float(wait) if isinstance(wait, (int, float)) else 0.0
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self.held: HeldToken | None = None  # read without the lock on the hot path
        self._flight: Flight | None = None
        self._rejected: Token | None = None  # never taken from the store again
        self._refused: OrderedDict[str, tuple[Token, float]] = OrderedDict()
        self._store_failing = False
        self._failures = 0  # failed flights in a row
        self._backoff_until = 0.0  # wall-clock: a window may come from a shared store
        self._backoff_error: BaseException | None = None
        self._vacated = "cold"  # why there is no token: the next flight's trigger

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self.store!r})"

    # -- the flows: what callers ask for ------------------------------------------------------
    # ``bound`` is the longest the caller's fetch may take (its transport's), for the
    # flight it may lead.

    def obtain(
        self, bound: float, unwanted: Token | None = None, trigger: str | None = None
    ) -> Flow[HeldToken]:
        """A token to send now: the held one unless EXPIRED (or ``unwanted``); a DUE one
        also starts an early refresh, which nobody waits for."""
        held = self.held
        if held is not None and held.token != unwanted:
            state = held.state(_clock.now())
            if state is TokenState.DUE:
                yield from self._refresh_early(held, bound)
            if state is not TokenState.EXPIRED:
                return held
        if trigger is None:
            trigger = "expired" if held is not None and held.token != unwanted else self._vacated
        held = yield from self._join(bound, unwanted, trigger)
        if held.token == unwanted:
            # A flight that read the store before the unwanted token was deleted from it:
            # one more, which will not take it from the store again.
            held = yield from self._join(bound, unwanted, trigger)
        return held

    def fresh(self, bound: float) -> Flow[HeldToken]:
        """Like :meth:`obtain`, but a DUE token is replaced before returning.

        As with an early refresh, a failed refresh of a token that is still
        usable keeps it, with a warning.
        """
        held = self.held
        if held is None or held.state(_clock.now()) is TokenState.VALID:
            return (yield from self.obtain(bound))
        try:
            return (yield from self.obtain(bound, held.token, "fresh"))
        except Exception as error:
            if self.held is not held or held.state(_clock.now()) is TokenState.EXPIRED:
                raise
            log.warning("OpsNow token refresh failed (%s); still using the current token", error)
            return held

    def after_401(self, bound: float, rejected: Token, route: str) -> Flow[HeldToken | None]:
        """After a 401 to a request to ``route`` that carried ``rejected``: the token to
        resend with, or None to return the 401 as it is.

        None if the replay of an earlier request to that route with ``rejected`` was
        refused too, less than :data:`REFETCH_AFTER_401_INTERVAL` ago (see
        :meth:`refused`). The held token if another caller already replaced
        ``rejected``. Otherwise ``rejected`` is dead: dropped, and one new token
        fetched (single flight), however soon after the last.
        """
        now = _clock.now()
        with self._lock:
            refusal = self._refused.get(route)
            if refusal is not None and refusal[0] == rejected and now < refusal[1]:
                log.debug("this key may not use %s: its 401 stands", route)
                return None
            held = self.held
            if (
                held is not None
                and held.token != rejected
                and held.state(now) is not TokenState.EXPIRED
            ):
                log.debug("token already replaced by another caller; replaying with it")
                _telemetry.replayed(self.key[:16], self.server, "replayed")
                return held
        yield from self.reject(rejected)
        held = yield from self.obtain(bound, rejected)
        _telemetry.replayed(self.key[:16], self.server, "replayed")
        return held

    def refused(self, route: str, token: Token) -> None:
        """The replay of a request to ``route`` with ``token`` (its replacement after a 401)
        was refused too: the key may not use that route. ``token`` stays in use."""
        with self._lock:
            self._refused[route] = (token, _clock.now() + REFETCH_AFTER_401_INTERVAL)
            self._refused.move_to_end(route)
            while len(self._refused) > REMEMBERED_REFUSALS:
                self._refused.popitem(last=False)
        log.debug(
            "%s refused a new token too: its 401 stands for %.0f s",
            route,
            REFETCH_AFTER_401_INTERVAL,
        )
        _telemetry.replayed(self.key[:16], self.server, "refused_again")

    def replay_skipped(self, rejected: Token) -> Flow[None]:
        """A 401 whose request cannot be resent (its body is a stream): :meth:`reject`."""
        _telemetry.replayed(self.key[:16], self.server, "skipped_body")
        yield from self.reject(rejected)

    def reject(self, rejected: Token) -> Flow[None]:
        """The server refused ``rejected`` (a 401): drop it here and from the store, if current."""
        if self._drop(rejected) and self.store is not None:
            yield Io(partial(self._store_delete, rejected))

    def invalidate(self) -> Flow[None]:
        """Forget the token, here and in the store, even one this process never used."""
        with self._lock:
            held, self.held = self.held, None
            self._vacated = "invalidate"
            if held is not None:
                self._rejected = held.token
        if held is not None:
            token: Token | None = held.token
        elif self.store is not None:
            token = yield Io(self._store_get)
        else:
            return
        if token is None:
            return
        with self._lock:
            # A flight may have published the stored token while we read it.
            self._rejected = token
            published: HeldToken | None = self.held
            if published is not None and published.token == token:
                self.held = None
        if self.store is not None:
            yield Io(partial(self._store_delete, token))

    def forget(self) -> None:
        """Start over, as in a new process: no token, no flight, nothing remembered (the
        store is left as it is). A flight still in the air lands without effect."""
        with self._lock:
            self._new_runtime_state()

    def stored(self) -> TokenInfo | None:
        """The token the store holds for this key, if any (no fetch; blocking): its source
        is the store, and its ``refresh_at`` the latest moment it falls due (the process
        that refreshes it may pick an earlier one: jitter)."""
        token = self._store_get()
        if token is None:
            return None
        refresh_at = refresh_deadlines(token, self.refresh_margin)[0]
        return TokenInfo(token, _store_name(self.store), refresh_at)

    # -- single flight ---------------------------------------------------------------------

    def _join(self, bound: float, unwanted: Token | None, trigger: str) -> Flow[HeldToken]:
        """A usable token: the held one, or the result of the flight in progress or a new one;
        in a backoff window, its error (unless the store got a token meanwhile)."""
        while True:
            with self._lock:
                usable = self._usable_unless(unwanted)
                if usable is not None:
                    return usable
                flight, leading = self._claim_flight(bound, trigger)
            if isinstance(flight, BaseException):  # a backoff window
                adopted: HeldToken | None = None
                if self.store is not None:
                    adopted = yield Io(self._adopt_stored)
                if adopted is None:
                    raise flight
                return adopted
            if leading:
                yield from self._launch(flight)
                yield Wait(flight)
            else:
                waiting_since = _clock.monotonic()
                yield Wait(flight)
                _telemetry.waited(flight.about, _clock.monotonic() - waiting_since)
            held = self._outcome(flight)
            if held is not None:
                return held

    def _usable_unless(self, unwanted: Token | None) -> HeldToken | None:
        """The held token if it may be sent, and is not ``unwanted``. Lock held."""
        held = self.held
        if (
            held is not None
            and held.token != unwanted
            and held.state(_clock.now()) is not TokenState.EXPIRED
        ):
            return held
        return None

    def _claim_flight(self, bound: float, trigger: str) -> tuple[Flight | BaseException, bool]:
        """``(flight, leading)``: the flight in the air, or a new one this caller leads; in a
        backoff window, ``(its error, False)``. Lock held. A stalled flight is joined, to be
        retired by :meth:`_outcome`."""
        flight = self._flight
        if flight is not None and not flight.landed:
            # An early refresh still queued for a thread: this caller, which needs the
            # token now, flies it itself (whoever starts it first runs it).
            return flight, flight.early and not flight.started
        now = _clock.now()
        if now < self._backoff_until and self._backoff_error is not None:
            return _in_window(self._backoff_error, self._backoff_until - now), False
        flight = self._flight = Flight(bound + self._store_wait, self._about(trigger), early=False)
        return flight, True

    def _about(self, trigger: str) -> Flown:
        return Flown(self.key[:16], self.server, trigger)

    def _launch(self, flight: Flight) -> Flow[None]:
        """Have ``flight`` flown; if the driver never got to it, land it as interrupted."""
        launched = False
        fly = self._fly(flight)
        try:
            in_place = yield Fly(flight, fly)
            launched = True
            if in_place:
                yield from fly
        finally:
            if not launched:
                self._land(flight, None, _INTERRUPTED)

    def _outcome(self, flight: Flight) -> HeldToken | None:
        """What a waiter makes of a flight it waited for: its token, or None to go round again."""
        if not flight.landed:
            self._retire(flight)
        held = flight.result()
        if held is None or held.token == self._rejected:
            return None  # interrupted or abandoned; or a store read just before a 401
        return held

    def _retire(self, flight: Flight) -> None:
        """Land a stalled flight: past its deadline, stopped with an error for its waiters;
        otherwise (nobody runs it) as interrupted, so that a new flight replaces it."""
        if _clock.monotonic() >= flight.deadline:
            flight.cancellation.cancel()
            self._land(flight, None, flight.stopped())
        else:
            self._land(flight, None, _INTERRUPTED)

    def _refresh_early(self, held: HeldToken, bound: float) -> Flow[None]:
        """Refresh a DUE token in a flight nobody waits for."""
        running = self._flight
        if running is not None and running.stalled(_clock.monotonic()):
            self._retire(running)  # say, a refresh task on an event loop closed since
        flight = self._claim_early_flight(held, bound)
        if flight is not None:
            yield from self._launch(flight)

    def _claim_early_flight(self, held: HeldToken, bound: float) -> Flight | None:
        """A new early-refresh flight for the DUE ``held``, unless one runs, or in a backoff
        window."""
        if self._flight is not None or _clock.now() < self._backoff_until:
            return None  # the common case while a refresh runs: no lock taken
        with self._lock:
            if (
                self._flight is not None
                or self.held is not held
                or _clock.now() < self._backoff_until
            ):
                return None
            about = self._about("early_refresh")
            flight = self._flight = Flight(bound + self._store_wait, about, early=True)
        return flight

    def _fly(self, flight: Flight) -> Flow[None]:
        """A flight's own flow: read the store or fetch, then land, with the token or with
        the answer every waiter gets (``docs/design.md``, "Token lifecycle")."""
        with self._lock:
            if flight.landed or flight.started:  # retired before it ran, or run by another
                return
            flight.started = True
            flight.deadline = _clock.monotonic() + flight.bound + WAIT_SLACK
        if self.store is None:
            log.debug("fetching a new OpsNow token")
        held: HeldToken | None = None
        error: BaseException | None = _INTERRUPTED  # unless an answer arrives
        try:
            token = yield Fetch(flight, self._through_store if self.store is not None else None)
            held, error = HeldToken(token, self.refresh_margin, flight.source), None
        except OpsNowAuthError as exc:
            error = exc
        except Exception as exc:
            # Whoever ran the fetch (a leading thread) raises its own exception; its waiters
            # get one answer from this flight, not a new flight each.
            error = _failed(exc)
            raise
        finally:  # anything else (Ctrl-C, a cancelled task) is an interruption
            if flight.early and error is not None and error is not _INTERRUPTED:
                log.warning(
                    "early OpsNow token refresh failed (%s); still using the current token", error
                )
            self._land(flight, held, error)

    def _land(self, flight: Flight, held: HeldToken | None, error: BaseException | None) -> None:
        """Land ``flight`` once (the first landing wins): publish its token, wake its waiters."""
        with self._lock:
            if flight.landed:
                return
            flight.held, flight.error = held, (error if held is None else None)
            flight.landed = True
            current = self._flight is flight  # not one from before forget()
            if current:
                self._flight = None
            if current and held is not None:
                self._failures, self._backoff_until, self._backoff_error = 0, 0.0, None
                if held.token != self._rejected:
                    self.held = held
            elif current and error is not None and error is not _INTERRUPTED:
                self._failures += 1
                until = vars(error).get(_UNTIL)
                self._backoff_until = until or _backoff_until(error, self._failures)
                self._backoff_error = error
        flight._wake()

    def _drop(self, rejected: Token) -> bool:
        """Forget ``rejected`` here; True if it was the held token (then the store must too)."""
        with self._lock:
            self._rejected = rejected
            dropped = self.held is not None and self.held.token == rejected
            if dropped:
                self.held, self._vacated = None, "rejected"
        if dropped:
            log.debug("server rejected the current token (401); dropping it")
        return dropped

    # -- the store: advisory, never fatal -------------------------------------------------------

    def _through_store(self, fetch: FetchFunction, flight: Flight) -> Token:
        """Lock the store, use the token it holds if still VALID, else fetch and store one;
        within a backoff window another process or host recorded there, its error."""
        with self._store_lock():
            cached = self._stored_usable()
            if cached is not None:
                log.debug("using the token another caller stored in %r", self.store)
                flight.source = _store_name(self.store)
                return cached
            window, now = self._store_call("backoff", None), _clock.now()
            # One that ends past the longest window is not ours: absent, like a bad token.
            if (
                isinstance(window, tuple)
                and len(window) == 3
                and now < window[0] <= now + LONGEST_BACKOFF
            ):
                raise _recorded(*window)
            log.debug("fetching a new OpsNow token")
            try:
                token = fetch(flight.cancellation)
            except OpsNowAuthError as error:
                until = _backoff_until(error, self._failures + 1)
                vars(error)[_UNTIL] = until  # for _land: the window this process records
                self._store_call("set_backoff", None, until, type(error).__name__, str(error))
                raise
            self._store_set(token)
            return token

    def _stored_usable(self) -> Token | None:
        """The store's token, if VALID and not the one a 401 rejected. Blocking."""
        cached = self._store_get()
        # Read after the store: a 401 elsewhere may just have rejected that very token.
        rejected = self._rejected
        if cached is None or cached == rejected:
            return None
        return cached if _clock.now() < refresh_deadlines(cached, self.refresh_margin)[0] else None

    def _adopt_stored(self) -> HeldToken | None:
        """In a backoff window: a token another process or host stored ends it. Blocking."""
        token = self._stored_usable()
        if token is None:
            return None
        held = HeldToken(token, self.refresh_margin, _store_name(self.store))
        with self._lock:
            self.held = held
            self._failures, self._backoff_until, self._backoff_error = 0, 0.0, None
        log.debug("a token arrived in %r: the backoff window ends", self.store)
        return held

    @contextlib.contextmanager
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

    def _store_call(self, method: str, default: object, *args: object) -> object:
        """``store.method(key, *args)`` if the store has that optional method (a backoff
        window's record); ``default`` without it, or when the store fails."""
        call = getattr(self.store, method, None)
        if call is None:
            return default
        try:
            return call(self.key, *args)
        except Exception as exc:  # noqa: BLE001
            self._store_failed(exc)
            return default

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


class _Registry(RuntimeState):
    """Lifecycles by identity: alive while an auth uses them or among the recent ones,
    within :data:`REMEMBERED_BYTES`."""

    _runtime_fields: ClassVar[tuple[str, ...]] = ("lock", "alive", "_recent", "_bytes")
    _kept_across_fork = ("alive", "_recent", "_bytes")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self.lock = threading.Lock()
        self.alive: WeakValueDictionary[Hashable, TokenLifecycle] = WeakValueDictionary()
        self._recent: OrderedDict[Hashable, tuple[TokenLifecycle, int]] = OrderedDict()
        self._bytes = 0  # the estimated size of what _recent keeps alive

    def get(
        self, token_url: str, api_key: str, refresh_margin: float, store: TokenCache | None
    ) -> TokenLifecycle:
        identity = (cache_key(token_url, api_key), refresh_margin, _place_of(store))
        with self.lock:
            lifecycle = self.alive.get(identity)
            if lifecycle is None:
                server = urlsplit(token_url).hostname or ""
                lifecycle = TokenLifecycle(identity[0], refresh_margin, store, server)
                self.alive[identity] = lifecycle
            held = lifecycle.held  # a token arrives after this call: weighed as a JWT's at least
            size = LIFECYCLE_BYTES + 2 * max(len(held.header) if held else 0, JWT_LENGTH)
            _, before = self._recent.pop(identity, (lifecycle, 0))
            self._recent[identity] = (lifecycle, size)
            self._bytes += size - before
            while self._bytes > REMEMBERED_BYTES:  # the least recently used go first
                _, (_, forgotten) = self._recent.popitem(last=False)
                self._bytes -= forgotten
        return lifecycle


def _store_name(store: object) -> str:
    """A store as a token's source: ``file``, ``redis``, ``memory``, else its class's name."""
    name = type(store).__name__
    names = {"FileTokenCache": "file", "RedisTokenCache": "redis", "MemoryTokenCache": "memory"}
    return names.get(name, name)


def _place_of(store: TokenCache | None) -> Hashable:
    """Where a store keeps tokens. Stores that name their place (``place``: a folder,
    say) are the same place when they name the same one, however many objects; any
    other store is a place of its own (the lifecycle holds it, so its id stays unique)."""
    if store is None:
        return None
    place = getattr(store, "place", None)
    return place if isinstance(place, tuple) else ("object", id(store))


_registry = _Registry()


def forget_all_tokens() -> None:
    """:meth:`TokenLifecycle.forget` for every lifecycle of the process (tests' isolation)."""
    with _registry.lock:
        lifecycles = list(_registry.alive.values())
    for lifecycle in lifecycles:
        lifecycle.forget()


def lifecycle_for(
    token_url: str, api_key: str, refresh_margin: float, store: TokenCache | None
) -> TokenLifecycle:
    """The process's lifecycle for this token URL, key, margin and store (made if needed)."""
    return _registry.get(token_url, api_key, refresh_margin, store)
