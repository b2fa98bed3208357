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

import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import ClassVar, Protocol
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

REMEMBERED_LIFECYCLES = 64
"""Lifecycles kept alive after their last auth is gone, most recently used first, so
that an auth built per call finds the token of the previous call. Older ones live only
as long as an auth uses them: memory stays bounded however many keys pass through."""

WAIT_SLACK = 5.0
"""Seconds a waiter allows beyond a fetch's own bound before it gives up on that fetch."""


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


class Fetch(Protocol):
    """Exchanges the key for a new token (raising an ``OpsNowAuthError`` on failure)."""

    @property
    def bound(self) -> float:
        """The longest one call may take, in seconds: waiters give up after this."""

    def __call__(self) -> Token: ...


class _Flight:
    """One fetch in progress. Waiters get its result, or its exception raised again."""

    def __init__(self, *, early: bool, deadline: float) -> None:
        self.early = early
        self.deadline = deadline  # on the monotonic clock of _clock.monotonic
        self._done = threading.Event()
        self._held: HeldToken | None = None
        self._error: BaseException | None = None

    def land(self, held: HeldToken | None, error: BaseException | None) -> None:
        self._held, self._error = held, error
        self._done.set()

    def wait(self) -> HeldToken | None:
        """The result; None if the flight has not landed by its deadline."""
        if not self._done.wait(max(0.0, self.deadline - _clock.monotonic())):
            return None
        if self._error is not None:
            raise self._error
        return self._held


class TokenLifecycle(RuntimeState):
    """The token of one (token URL, key, refresh margin, store) in this process."""

    _runtime_fields = ("_lock", "held", "_flight", "_rejected", "_early_retry_at")
    _kept_across_fork = ("held", "_rejected")

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
        """Like :meth:`usable`, but a DUE token is replaced before returning (no thread)."""
        held = self.held
        if held is not None and held.state(_clock.now()) is not TokenState.VALID:
            return self._wait_for_token(fetch, rejected=held.token)
        return self.usable(fetch)

    def replacement_for(self, rejected: Token, fetch: Fetch) -> HeldToken:
        """After a 401 to ``rejected``: the token to resend with.

        If another caller already replaced it, that token, without a fetch;
        otherwise ``rejected`` is dropped and one new token fetched (single flight).
        """
        with self._lock:
            held = self.held
            if (
                held is not None
                and held.token != rejected
                and held.state(_clock.now()) is not TokenState.EXPIRED
            ):
                log.debug("token already replaced by another caller; replaying with it")
                return held
        self.reject(rejected)
        return self._wait_for_token(fetch, rejected=rejected)

    def reject(self, rejected: Token) -> None:
        """The server refused ``rejected`` (a 401): drop it here and from the store, if current."""
        with self._lock:
            self._rejected = rejected
            dropped = self.held is not None and self.held.token == rejected
            if dropped:
                self.held = None
        if dropped:
            log.debug("server rejected the current token (401); dropping it")
            self._store_delete(rejected)

    def invalidate(self) -> None:
        """Forget the token, here and in the store, even one this process never used."""
        with self._lock:
            held, self.held = self.held, None
        token = held.token if held is not None else self._store_get()
        if token is not None:
            with self._lock:
                self._rejected = token
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
        while True:
            with self._lock:
                held = self.held
                if (
                    held is not None
                    and held.token != rejected
                    and held.state(_clock.now()) is not TokenState.EXPIRED
                ):
                    return held
                flight = self._flight
                if flight is None:
                    flight = self._flight = self._new_flight(fetch, early=False)
                    leader = True
                else:
                    leader = False
            if leader:
                self._fly(flight, fetch)
            result = flight.wait()
            if result is not None:
                return result
            self._abandon(flight)

    def _new_flight(self, fetch: Fetch, *, early: bool) -> _Flight:
        return _Flight(early=early, deadline=_clock.monotonic() + fetch.bound + WAIT_SLACK)

    def _abandon(self, flight: _Flight) -> None:
        """A flight outlived its deadline: let the next caller start a new one, and say so."""
        with self._lock:
            if self._flight is flight:
                self._flight = None
        raise TokenRequestError("gave up waiting for the token request in progress")

    def _start_early_refresh(self, held: HeldToken, fetch: Fetch) -> None:
        """Refresh a DUE token in the background; nobody waits for it."""
        if self._flight is not None or _clock.now() < self._early_retry_at:
            return  # the common case while a refresh runs: no lock taken
        with self._lock:
            if (
                self._flight is not None
                or self.held is not held
                or _clock.now() < self._early_retry_at
            ):
                return
            flight = self._flight = self._new_flight(fetch, early=True)
        worker = threading.Thread(
            target=self._fly, args=(flight, fetch), name="requests-opsnow-refresh", daemon=True
        )
        try:
            worker.start()
        except BaseException as error:  # e.g. at interpreter shutdown; expiry will block instead
            self._land(flight, None, OpsNowAuthError("could not start the token refresh thread"))
            if not isinstance(error, Exception):
                raise

    def _fly(self, flight: _Flight, fetch: Fetch) -> None:
        """Run one flight: read the store or fetch, publish, wake the waiters."""
        held: HeldToken | None = None
        error: BaseException | None = None
        try:
            held = HeldToken(self._from_store_or_fetch(fetch), self.refresh_margin)
        except Exception as exc:  # noqa: BLE001 - shared with every waiter, raised there
            error = exc
            if flight.early:
                log.warning(
                    "early OpsNow token refresh failed (%s); still using the current token", exc
                )
        except BaseException:
            # Ctrl-C or exit hit the fetching thread: the waiters get an error of their
            # own, not the interrupt, and the next caller starts a new flight.
            error = OpsNowAuthError("the token request was interrupted")
            raise
        finally:
            self._land(flight, held, error)

    def _land(self, flight: _Flight, held: HeldToken | None, error: BaseException | None) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
            if held is not None:
                self.held = held
            elif flight.early:
                self._early_retry_at = _clock.now() + EARLY_RETRY_DELAY
        flight.land(held, error if held is None else None)

    # -- the store ----------------------------------------------------------------------------

    def _from_store_or_fetch(self, fetch: Fetch) -> Token:
        store = self.store
        if store is None:
            log.debug("fetching a new OpsNow token")
            return fetch()
        with store.lock(self.key):
            cached = store.get(self.key)
            # Read after the store: a 401 elsewhere may just have rejected that very token.
            rejected = self._rejected
            if (
                cached is not None
                and cached != rejected
                and _clock.now() < refresh_deadlines(cached, self.refresh_margin)[0]
            ):
                log.debug("using the token another caller stored in %r", store)
                return cached
            log.debug("fetching a new OpsNow token")
            token = fetch()
            store.set(self.key, token)
            return token

    def _store_get(self) -> Token | None:
        return self.store.get(self.key) if self.store is not None else None

    def _store_delete(self, token: Token) -> None:
        if self.store is not None:
            self.store.delete(self.key, token)


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
        key = cache_key(token_url, api_key)
        # A store is a place: two different store objects are two different places.
        identity = (key, refresh_margin, id(store) if store is not None else None)
        with self._lock:
            lifecycle = self._alive.get(identity)
            if lifecycle is None:
                lifecycle = self._alive[identity] = TokenLifecycle(key, refresh_margin, store)
            self._recent[identity] = lifecycle
            self._recent.move_to_end(identity)
            while len(self._recent) > REMEMBERED_LIFECYCLES:
                self._recent.popitem(last=False)
        return lifecycle


_registry = _Registry()


def lifecycle_for(
    token_url: str, api_key: str, refresh_margin: float, store: TokenCache | None
) -> TokenLifecycle:
    """The process's lifecycle for this token URL, key, margin and store (made if needed)."""
    return _registry.get(token_url, api_key, refresh_margin, store)
