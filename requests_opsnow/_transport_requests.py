"""Token requests over requests: sessions, TLS and proxy settings, cancellable sockets.

What to send and what an answer means is ``_protocol``'s; this module sends
with requests, reads at most ``MAX_RESPONSE_BYTES`` of the answer, and sleeps
as the retry schedule says.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.poolmanager import pool_classes_by_scheme

from . import _clock
from ._lifecycle import Cancellation
from ._protocol import (
    READ_STEP,
    REDACTED_BODY,
    Body,
    RetrySchedule,
    TokenEndpoint,
    TokenRequest,
    broke_off,
    failure,
    kept_for_errors,
    mock_refusal,
    read_answer,
    token_request,
    unusable_tls_files,
)
from ._token import Token
from .errors import TokenRequestError

TLS_FIXES = (
    "OpsNowAuth(verify='/path/to/ca.pem'), REQUESTS_CA_BUNDLE=/path/to/ca.pem,"
    " or OpsNowSession().verify = '/path/to/ca.pem'"
)
"""The ways a requests user trusts a corporate CA, named by TLS errors."""


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Request-level auth that beats any ``session.auth`` (even an OpsNowAuth)."""
    return request


class SendSettings:
    """TLS and proxy settings for the token request, with requests' meanings.

    ``None`` for ``verify``, ``cert`` and ``proxies`` means requests' default
    (and, with ``trust_env``, the environment: ``REQUESTS_CA_BUNDLE``,
    ``HTTPS_PROXY``, ``NO_PROXY``...), as for any request.
    """

    __slots__ = ("cert", "proxies", "trust_env", "verify")

    def __init__(
        self,
        *,
        verify: bool | str | None = None,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
        trust_env: bool = True,
    ) -> None:
        self.verify = verify
        self.cert = cert
        self.proxies = dict(proxies) if proxies is not None else None
        self.trust_env = trust_env

    def under(self, session: requests.Session | None) -> SendSettings:
        """These settings, with ``session``'s where these leave them open."""
        if session is None:
            return self
        return SendSettings(
            verify=self.verify if self.verify is not None else session.verify,
            cert=self.cert if self.cert is not None else session.cert,
            proxies={**session.proxies, **(self.proxies or {})},
            trust_env=session.trust_env,
        )

    def send_options(self, session: requests.Session, url: str) -> dict[str, Any]:
        """``session.send`` options for a request to ``url``, merged as ``Session.request`` does."""
        options: dict[str, Any] = dict(
            session.merge_environment_settings(
                url, dict(self.proxies or {}), False, self.verify, self.cert
            )
        )
        if url.startswith("http:"):  # plain http goes to loopback only, and never via a proxy
            options["proxies"] = {}
        return options


class RequestsTransport:
    """One auth's token requests over requests: its endpoint, key, session and settings.

    ``session`` is the caller's, used as given; without one, a private session
    lives for one fetch only (a token is fetched once a lifetime: an idle
    connection kept for the next one would help nobody). Its sockets close as
    soon as the fetch is cancelled (it outlived :attr:`TokenEndpoint.bound`).
    Raises :class:`InvalidApiKeyError`, :class:`TokenRequestError` or
    :class:`TokenResponseError`; neither their messages nor anything they
    carry hold the key.
    """

    __slots__ = ("_api_key", "_followed", "_session", "_settings", "endpoint")

    def __init__(
        self,
        endpoint: TokenEndpoint,
        api_key: str,
        session: requests.Session | None,
        settings: SendSettings,
    ) -> None:
        self.endpoint = endpoint
        self._api_key = api_key
        self._session = session
        self._settings = settings
        self._followed: weakref.ref[requests.Session] | None = None

    def use_key(self, api_key: str) -> None:
        """Send ``api_key`` from the next fetch on (the auth's key source holds another)."""
        self._api_key = api_key

    def follow(self, session: requests.Session) -> None:
        """Send with ``session``'s verify, cert, proxies and trust_env, as they are at each
        fetch; unless another live session already set them (a shallow copy of that
        session shares its auth)."""
        if self._followed is None or self._followed() is None:
            self._followed = weakref.ref(session)

    def __call__(self, cancellation: Cancellation) -> Token:
        followed = self._followed() if self._followed is not None else None
        settings = self._settings if followed is None else self._settings.under(followed)
        session = self._session
        if session is None:
            session = requests.Session()
            session.trust_env = settings.trust_env
            adapter = _CancellableAdapter()
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        context = _current_cancellation.set(cancellation)
        try:
            api_key = self._api_key  # one key for the whole fetch, though the auth may switch
            request, schedule = token_request(self.endpoint, api_key), None
            while True:
                try:
                    return self._attempt(session, request, settings, cancellation, api_key)
                except TokenRequestError as error:
                    schedule = schedule or RetrySchedule(self.endpoint)
                    _clock.sleep(schedule.delay_after(error, stopped=cancellation.cancelled))
        finally:
            _current_cancellation.reset(context)
            if session is not self._session:
                session.close()

    def _attempt(
        self,
        session: requests.Session,
        request: TokenRequest,
        settings: SendSettings,
        cancellation: Cancellation,
        api_key: str,
    ) -> Token:
        method, url, headers, body = request
        # A session of the caller's may have an auth (even an OpsNowAuth): never for this.
        auth = _no_auth if session is self._session else None
        prepared = session.prepare_request(
            requests.Request(method, url, headers, data=body, auth=auth)
        )
        # What our errors and responses carry (they end up pickled into result backends and
        # error trackers) is a copy without the key; the request itself stays as it was sent,
        # for mocking libraries' call logs.
        redacted = prepared.copy()
        redacted.body = REDACTED_BODY
        cancellation.attempts += 1
        # stream: read below, within the limit; no redirect: the key goes nowhere else
        options = {**settings.send_options(session, url), "stream": True, "allow_redirects": False}
        try:
            response = session.send(prepared, timeout=self.endpoint.timeout, **options)
        except Exception as exc:
            if isinstance(exc, requests.RequestException):
                exc.request = redacted
            elif isinstance(exc, OSError):  # requests' check of verify= and cert= paths
                raise unusable_tls_files(self.endpoint, exc, TLS_FIXES) from exc
            if _refused_by_a_mock(exc):
                raise mock_refusal(self.endpoint, str(exc), api_key) from exc
            stopped, timed_out = cancellation.cancelled, isinstance(exc, requests.Timeout)
            raise failure(
                self.endpoint, exc, stopped=stopped, timed_out=timed_out, tls_fixes=TLS_FIXES
            ) from exc
        with response:
            response.request = redacted
            read = Body()
            try:  # requests' own reading: any adapter; urllib3 inflates a step at a time
                for chunk in response.iter_content(READ_STEP):
                    if read.add(chunk):
                        break
            except requests.RequestException as exc:
                raise broke_off(self.endpoint, exc) from exc
            key, status, reason = api_key, response.status_code, response.reason
            response.reason = (reason or "").replace(key, "***")
            response._content = kept_for_errors(status, read.data, key)
            return read_answer(
                self.endpoint, key, status, reason, response.headers, read.data, "", response
            )


_current_cancellation: ContextVar[Cancellation | None] = ContextVar(
    "requests_opsnow_cancellation", default=None
)
"""The cancellation of the fetch running in this thread, for the sockets it opens."""


def _refused_by_a_mock(error: Exception) -> bool:
    """``responses`` and ``requests-mock`` refusing a request they have no mock for."""
    return type(error).__name__ == "NoMockAddress" or str(error).startswith(
        "Connection refused by Responses"
    )


class _CancellableAdapter(HTTPAdapter):
    """An adapter whose connections register with the fetch's cancellation.

    A server that answers one byte a second never trips a read timeout (it
    applies to each read); when the fetch outlives its bound, the watchdog
    shuts the socket and the fetching thread's read fails at once.
    """

    # cast: the type stubs of some requests releases leave these methods untyped.
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        cast(Any, super()).init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _CANCELLABLE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = cast(Any, super()).proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _CANCELLABLE_POOLS
        return manager


def _cancellable(pool_class: type[Any]) -> type[Any]:
    base = pool_class.ConnectionCls

    def connect(self: Any) -> None:
        base.connect(self)
        cancellation = _current_cancellation.get()
        sock = getattr(self, "sock", None)
        if cancellation is not None and sock is not None:
            cancellation.on_cancel(lambda: _shut_down(sock))

    connection_class = type(base.__name__, (base,), {"connect": connect})
    return type(pool_class.__name__, (pool_class,), {"ConnectionCls": connection_class})


_CANCELLABLE_POOLS = {scheme: _cancellable(pool) for scheme, pool in pool_classes_by_scheme.items()}


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own shutdown, not SSLSocket's: that one drops the TLS state under
    # the thread that is reading, which then fails with an AttributeError.
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
