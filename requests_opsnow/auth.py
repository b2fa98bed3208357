"""OpsNowAuth: the requests auth plugin. It wires the token lifecycle into requests.

The token's life (caching, early refresh, single flight, rejection) belongs to
:mod:`requests_opsnow._lifecycle`, shared by every auth with the same key; the
token request to :mod:`requests_opsnow._exchange`; the resend after a 401 to
:mod:`requests_opsnow._replay`; where the token may go to
:mod:`requests_opsnow._hosts`. The hot path (``__call__``) is a host lookup,
an identity check, a clock read, a header and a hook.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import requests
from requests.auth import AuthBase

from . import _clock
from ._config import DEFAULT_MAX_RETRIES, DEFAULT_REFRESH_MARGIN, TOKEN_TIMEOUT
from ._core import AuthCore, check_cleartext
from ._exchange_requests import SendSettings, fetch_token
from ._hosts import Decision
from ._lifecycle import Cancellation, HeldToken
from ._replay import inert_hook, passes_through, replay_with
from ._token import Token
from .cache import TokenCache


class OpsNowAuth(AuthCore, AuthBase):
    """Authenticate requests to the OpsNow API with a cached, self-refreshing token.

    ``requests.get(url, auth=OpsNowAuth(key))`` or ``session.auth = OpsNowAuth()``.
    Every auth with the same token URL, key, refresh margin and token store
    shares one token in a process, so building one per call is cheap. See the
    README for every option; ``None`` always means "the default".
    """

    _runtime_fields = (*AuthCore._runtime_fields, "_attached", "_fetch", "_settings_session")
    _kept_across_fork = _runtime_fields  # the lifecycle resets itself in a child

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        token_url: str | None = None,
        refresh_margin: float | None = DEFAULT_REFRESH_MARGIN,
        timeout: float | tuple[float, float] | None = TOKEN_TIMEOUT,
        max_retries: int | None = DEFAULT_MAX_RETRIES,
        allowed_hosts: Iterable[str] | None = None,
        cache: TokenCache | None = None,
        profile: str | None = None,
        session: requests.Session | None = None,
        verify: bool | str | None = None,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        self._session = session
        self._send_settings = SendSettings(verify=verify, cert=cert, proxies=proxies)
        super().__init__(
            api_key,
            base_url=base_url,
            token_url=token_url,
            refresh_margin=refresh_margin,
            timeout=timeout,
            max_retries=max_retries,
            allowed_hosts=allowed_hosts,
            cache=cache,
            profile=profile,
        )

    def _new_runtime_state(self) -> None:
        super()._new_runtime_state()
        self._attached = _NOTHING_ATTACHED
        self._fetch = _Fetch(self)
        # Set by an OpsNowSession that built this auth: its verify, cert, proxies and
        # trust_env (read at each fetch, so later changes count) apply to token requests.
        self._settings_session: Callable[[], requests.Session | None] = _no_session

    # -- the hot path -------------------------------------------------------------

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        decision = self._hosts.decide(r.url or "")
        if decision is not Decision.ATTACH:
            if decision is Decision.SKIP:
                return r
            check_cleartext(r.url or "", decision, r)
        attached = self._attached
        if attached.held is not self._lifecycle.held or _clock.now() >= attached.refresh_at:
            attached = self._attach(self._lifecycle.usable(self._fetch))
        r.headers["Authorization"] = attached.header
        r.hooks["response"].append(attached.hook)
        return r

    def _attach(self, held: HeldToken) -> _Attached:
        attached = self._attached
        if attached.held is not held:
            attached = self._attached = _Attached(held, _ReplayHook(self, held))
        return attached

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
        lifecycle = self._lifecycle
        held = lifecycle.fresh(self._fetch) if fresh else lifecycle.usable(self._fetch)
        return held.token

    def close(self) -> None:
        """Nothing to close: a token request's connection lives only as long as the fetch.

        Kept so that code written for earlier versions (and ``with`` blocks) keep working.
        """

    # -- the token request ----------------------------------------------------------

    def _follow_session_settings(self, session: requests.Session) -> None:
        """Send token requests with ``session``'s verify, cert, proxies and trust_env.

        Only if no other live session already set this auth's settings (a shallow
        copy of that session shares this very auth object).
        """
        if self._settings_session() is None:
            self._settings_session = weakref.ref(session)

    def _current_send_settings(self) -> SendSettings:
        session = self._settings_session()
        if session is None:
            return self._send_settings
        own = self._send_settings
        return SendSettings(
            verify=own.verify if own.verify is not None else session.verify,
            cert=own.cert if own.cert is not None else session.cert,
            proxies={**session.proxies, **(own.proxies or {})},
            trust_env=session.trust_env,
        )

    def _fetch_token(self, cancellation: Cancellation) -> Token:
        return fetch_token(
            self._endpoint,
            self._api_key,
            self._session,
            self._current_send_settings(),
            cancellation,
        )

    # -- the 401 handler ----------------------------------------------------------

    def _on_401(
        self, sent: HeldToken, response: requests.Response, send_options: dict[str, Any]
    ) -> requests.Response:
        # Only a response to a request that really carried this token: after a
        # cross-origin redirect requests has stripped it, and we never put it back.
        if response.request.headers.get("Authorization") != sent.header:
            return response
        lifecycle = self._lifecycle

        def new_header() -> str | None:
            replacement = lifecycle.replacement_for(sent.token, self._fetch)
            return replacement.header if replacement is not None else None

        return replay_with(response, new_header, lambda: lifecycle.reject(sent.token), send_options)


class _Fetch:
    """The lifecycle's way to get a token with one auth's endpoint, session and settings."""

    __slots__ = ("_auth",)

    def __init__(self, auth: OpsNowAuth) -> None:
        self._auth = auth

    @property
    def bound(self) -> float:
        return self._auth._endpoint.bound

    def __call__(self, cancellation: Cancellation) -> Token:
        return self._auth._fetch_token(cancellation)


class _ReplayHook:
    """The response hook of requests that carried ``held``: made once per token and auth.

    A response (with its request and hooks) must pickle, for process pools and
    response caches; a pickled hook holds neither the auth nor its key, and
    does nothing once unpickled.
    """

    __slots__ = ("auth", "held")

    def __init__(self, auth: OpsNowAuth, held: HeldToken) -> None:
        self.auth = auth
        self.held = held

    def __call__(self, response: requests.Response, **send_options: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        return self.auth._on_401(self.held, response, send_options)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., Any]], tuple[()]]:
        return (inert_hook, ())


class _Attached:
    """What one auth sends with a held token: its header and its 401 hook."""

    __slots__ = ("header", "held", "hook", "refresh_at")

    def __init__(self, held: HeldToken | None, hook: Callable[..., Any]) -> None:
        self.held = held
        self.hook = hook
        self.header = held.header if held is not None else ""
        self.refresh_at = held.refresh_at if held is not None else float("-inf")


_NOTHING_ATTACHED = _Attached(None, passes_through)
"""Before the first request: never current, so the first call asks the lifecycle."""


def _no_session() -> None:
    return None
