"""OpsNowAuth: the requests auth plugin. It wires the other modules together.

The hot path (``__call__``) is a host lookup, a clock read, a header and a
hook. Everything slow — fetching, single flight, early refresh, the 401
replay — happens off it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Callable

import requests
from requests.auth import AuthBase

from . import _clock, _forksafe
from ._config import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REFRESH_MARGIN,
    DEFAULT_TIMEOUT,
    TOKEN_PATH,
    check_max_retries,
    check_refresh_margin,
    check_timeout,
    host_list,
    resolve_api_key,
    resolve_base_url,
)
from ._exchange import TokenEndpoint, fetch_token
from ._flight import Flight
from ._hosts import Decision, HostPolicy, check_secure_url
from ._replay import replay_with
from ._token import Token
from .cache import MemoryTokenCache, TokenCache, cache_key
from .errors import OpsNowAuthError

log = logging.getLogger("requests_opsnow")

MANDATORY_WINDOW = 10.0
"""A token this close to expiry is treated as expired: callers wait for a new one.

Capped at half the (capped) refresh margin, so short-lived tokens still get an
early, non-blocking refresh.
"""

EARLY_RETRY_DELAY = 5.0
"""After a failed early refresh, wait this long before trying again in the background."""


class _Current:
    """The token in use, with its precomputed header and refresh deadlines."""

    __slots__ = ("block_at", "header", "hook", "refresh_at", "token")

    def __init__(self, auth: OpsNowAuth, token: Token) -> None:
        margin = min(auth.refresh_margin, token.lifetime / 2)
        self.token = token
        self.header = f"Bearer {token.value}"
        self.refresh_at = token.expires_at - margin
        self.block_at = token.expires_at - min(MANDATORY_WINDOW, margin / 2)
        self.hook = _response_hook(auth, self)


def _response_hook(auth: OpsNowAuth, sent: _Current) -> Callable[..., requests.Response]:
    """The response hook of requests that carried ``sent``: made once per token.

    A plain function, so that the common case (not a 401) costs one call and
    one comparison on every response.
    """

    def hook(response: requests.Response, **send_options: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        return auth._on_401(sent, response, send_options)

    return hook


class OpsNowAuth(AuthBase):
    """Authenticate requests to the OpsNow API with a cached, self-refreshing token.

    ``requests.get(url, auth=OpsNowAuth(key))`` or ``session.auth = OpsNowAuth()``.
    See the README for every option; ``None`` always means "the default".
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        token_url: str | None = None,
        refresh_margin: float | None = DEFAULT_REFRESH_MARGIN,
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        max_retries: int | None = DEFAULT_MAX_RETRIES,
        allowed_hosts: Iterable[str] | None = None,
        cache: TokenCache | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self._api_key = resolve_api_key(api_key)
        self.base_url = resolve_base_url(base_url)
        self.token_url = token_url if token_url is not None else self.base_url + TOKEN_PATH
        check_secure_url(self.base_url, "base_url")
        check_secure_url(self.token_url, "token_url")
        self.refresh_margin = check_refresh_margin(refresh_margin)
        self._endpoint = TokenEndpoint(
            self.token_url, check_timeout(timeout), check_max_retries(max_retries)
        )
        self._hosts = HostPolicy([self.base_url, self.token_url], host_list(allowed_hosts))
        self._cache: TokenCache = cache if cache is not None else MemoryTokenCache()
        self._cache_key = cache_key(self.token_url, self._api_key)
        self._session = session
        self._reset_runtime_state()
        _forksafe.register(self)

    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._current: _Current | None = None
        self._flight: Flight[_Current] | None = None
        self._rejected: Token | None = None  # never taken from a shared cache again
        self._own_session: requests.Session | None = None
        self._early_retry_at = 0.0

    def _reset_after_fork(self) -> None:
        # Keep the token (it is valid in the child too); drop the lock, the flight
        # and the parent's pooled connections, which the child must not share.
        current = self._current
        self._reset_runtime_state()
        self._current = current

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_url={self._endpoint.safe_url!r})"

    # -- pickle / deepcopy: a copy gets fresh locks and no token -----------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in (
            "_lock", "_current", "_flight", "_rejected", "_own_session", "_early_retry_at",
        ):  # fmt: skip
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime_state()
        _forksafe.register(self)

    # -- the hot path -------------------------------------------------------------

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        decision = self._hosts.decide(r.url or "")
        if decision is not Decision.ATTACH:
            if decision is Decision.REFUSE:
                raise OpsNowAuthError(
                    "refusing to send the OpsNow token over plain http to a non-loopback host;"
                    " use https",
                    request=r,
                )
            return r
        current = self._current
        if current is None or _clock.now() >= current.refresh_at:
            current = self._current_when_due(current)
        r.headers["Authorization"] = current.header
        r.hooks["response"].append(current.hook)
        return r

    # -- public helpers -----------------------------------------------------------

    def get_token(self) -> str:
        """A valid access token, fetched if needed."""
        return self.get_token_info().value

    def get_token_info(self, *, fresh: bool = False) -> Token:
        """Like :meth:`get_token`, with the expiry: a :class:`Token` (value, expires_at).

        ``fresh=True`` waits for the refresh of a token that is due, instead of
        returning it while a background thread refreshes it: for short-lived
        processes (the ``opsnow`` command) that would exit before that thread is done.
        """
        current = self._current
        if current is None or _clock.now() >= current.refresh_at:
            if fresh and current is not None:
                current = self._wait_for_token(rejected=current.token)
            else:
                current = self._current_when_due(current)
        return current.token

    def invalidate(self) -> None:
        """Forget the token, here and in a shared cache: the next request fetches a new one.

        Also when this process has not used the token yet (``opsnow token --renew``
        after a ``curl`` got a 401): it is read from the cache to be forgotten.
        """
        with self._lock:
            current, self._current = self._current, None
        token = current.token if current is not None else self._cache.get(self._cache_key)
        if token is not None:
            self._rejected = token
            self._cache.delete(self._cache_key, token)

    def close(self) -> None:
        """Close the connections of the private session used for token requests."""
        session, self._own_session = self._own_session, None
        if session is not None:
            session.close()

    # -- obtaining a token --------------------------------------------------------

    def _current_when_due(self, current: _Current | None) -> _Current:
        if current is not None and _clock.now() < current.block_at:
            self._start_early_refresh(current)
            return current
        return self._wait_for_token()

    def _wait_for_token(self, rejected: Token | None = None) -> _Current:
        """Block until a usable token exists; at most one fetch runs at a time."""
        current = self._join_flight(rejected)
        if current.token == rejected:
            # A flight that read the shared cache before the rejected token was dropped
            # from it: one more flight, which will not take it from the cache again.
            current = self._join_flight(rejected)
        return current

    def _join_flight(self, rejected: Token | None) -> _Current:
        with self._lock:
            current = self._current
            if (
                current is not None
                and _clock.now() < current.block_at
                and current.token != rejected
            ):
                return current
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = Flight()
        if leader:
            self._fly(flight)
        return flight.wait()

    def _start_early_refresh(self, current: _Current) -> None:
        """Refresh a due-but-valid token in the background; nobody waits for it."""
        if self._flight is not None or _clock.now() < self._early_retry_at:
            return  # the common case while a refresh runs: no lock taken
        with self._lock:
            if (
                self._flight is not None
                or self._current is not current
                or _clock.now() < self._early_retry_at
            ):
                return
            flight = self._flight = Flight[_Current](early=True)
        worker = threading.Thread(
            target=self._fly, args=(flight,), name="requests-opsnow-refresh", daemon=True
        )
        try:
            worker.start()
        except BaseException as error:  # e.g. at interpreter shutdown; expiry will block instead
            self._land(flight, error=OpsNowAuthError("could not start the token refresh thread"))
            if not isinstance(error, Exception):
                raise

    def _fly(self, flight: Flight[_Current]) -> None:
        """Run one flight: fetch (or read the shared cache), publish, wake the waiters."""
        try:
            current = _Current(self, self._fetch_through_cache())
        except Exception as error:  # noqa: BLE001 - shared with every waiter, raised there
            self._land(flight, error=error)
            if flight.early:
                log.warning(
                    "early OpsNow token refresh failed (%s); still using the current token",
                    error,
                )
        except BaseException:
            # Ctrl-C or exit hit the fetching thread: the waiters get an error of their
            # own, not the interrupt, and the next caller starts a new flight.
            self._land(flight, error=OpsNowAuthError("the token request was interrupted"))
            raise
        else:
            self._land(flight, current=current)

    def _land(
        self,
        flight: Flight[_Current],
        *,
        current: _Current | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
            if current is not None:
                self._current = current
            elif flight.early:
                self._early_retry_at = _clock.now() + EARLY_RETRY_DELAY
        if current is not None:
            flight.succeed(current)
        else:
            flight.fail(error or OpsNowAuthError("token request failed"))

    def _fetch_through_cache(self) -> Token:
        with self._cache.lock(self._cache_key):
            cached = self._cache.get(self._cache_key)
            # Read after the cache: a 401 elsewhere may just have rejected that very token.
            rejected = self._rejected
            if cached is not None and cached != rejected and self._fresh(cached):
                log.debug("using the token another caller stored in %r", self._cache)
                return cached
            log.debug("fetching a new OpsNow token")
            token = fetch_token(self._endpoint, self._api_key, self._token_session())
            self._cache.set(self._cache_key, token)
            return token

    def _fresh(self, token: Token) -> bool:
        margin = min(self.refresh_margin, token.lifetime / 2)
        return _clock.now() < token.expires_at - margin

    def _token_session(self) -> requests.Session:
        if self._session is not None:
            return self._session
        session = self._own_session
        if session is None:
            session = self._own_session = requests.Session()
        return session

    # -- the 401 handler ----------------------------------------------------------

    def _on_401(
        self, sent: _Current, response: requests.Response, send_options: dict[str, Any]
    ) -> requests.Response:
        request = response.request
        # Only a response to a request that really carried this token: after a
        # cross-origin redirect requests has stripped it, and we never put it back.
        if request.headers.get("Authorization") != sent.header:
            return response
        return replay_with(response, lambda: self._replacement_for(sent), send_options)

    def _replacement_for(self, rejected: _Current) -> _Current:
        """The token to replay with: a fresh one, unless another thread already has it."""
        with self._lock:
            current = self._current
            replaced = current is not None and current.token != rejected.token
            if replaced and current is not None and _clock.now() < current.block_at:
                log.debug("token already replaced by another caller; replaying with it")
                return current
            dropped = current is not None and current.token == rejected.token
            self._current = None if dropped else current
            self._rejected = rejected.token
        if dropped:
            log.debug("server rejected the cached token (401); dropping it")
            self._cache.delete(self._cache_key, rejected.token)
        return self._wait_for_token(rejected=rejected.token)
