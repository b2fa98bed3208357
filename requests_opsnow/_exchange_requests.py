"""The token request over requests: sessions, TLS and proxy settings, cancellable sockets.

The policy (retries, limits, turning answers into tokens or errors) is
``_exchange``'s; this module only sends and reads with requests.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter

from ._error_body import reason_phrase
from ._exchange import (
    READ_STEP,
    REDACTED_BODY,
    TOKEN_REQUEST_HEADERS,
    Answer,
    TokenEndpoint,
    body_kept_for_errors,
    declared_too_large,
    failure,
    limited,
    run_with_retries,
    token_from_answer,
    token_request_json,
    too_large,
    unusable_tls_files,
)
from ._lifecycle import Cancellation
from ._token import Token
from .errors import TokenRequestError, TokenResponseError

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


def fetch_token(
    endpoint: TokenEndpoint,
    api_key: str,
    session: requests.Session | None,
    settings: SendSettings,
    cancellation: Cancellation,
) -> Token:
    """Exchange ``api_key`` for a token over requests, retrying transient failures.

    ``session`` is the caller's, used as given; without one, a private session
    lives for this fetch only (a token is fetched once a lifetime: an idle
    connection kept for the next one would help nobody). Its sockets close as
    soon as ``cancellation`` is cancelled (the fetch outlived
    :attr:`TokenEndpoint.bound`). Raises :class:`InvalidApiKeyError`,
    :class:`TokenRequestError` or :class:`TokenResponseError`; neither their
    messages nor anything they carry hold the key.
    """
    context = _current_cancellation.set(cancellation)
    try:
        if session is not None:
            return _with(session, endpoint, api_key, settings, cancellation)
        with requests.Session() as private:
            private.trust_env = settings.trust_env
            for prefix in ("https://", "http://"):
                private.mount(prefix, _CancellableAdapter())
            return _with(private, endpoint, api_key, settings, cancellation)
    finally:
        _current_cancellation.reset(context)


def _with(
    session: requests.Session,
    endpoint: TokenEndpoint,
    api_key: str,
    settings: SendSettings,
    cancellation: Cancellation,
) -> Token:
    def attempt() -> Token:
        return _attempt(endpoint, api_key, session, settings, cancellation)

    return run_with_retries(attempt, endpoint, cancellation)


def _attempt(
    endpoint: TokenEndpoint,
    api_key: str,
    session: requests.Session,
    settings: SendSettings,
    cancellation: Cancellation,
) -> Token:
    request = requests.Request(
        "POST",
        endpoint.url,
        json=token_request_json(api_key),
        headers=TOKEN_REQUEST_HEADERS,
        auth=_no_auth,
    )
    prepared = session.prepare_request(request)
    with _send(prepared, endpoint, session, settings, cancellation) as response:
        return token_from_answer(_read(response, endpoint, api_key), endpoint, api_key)


def _send(
    prepared: requests.PreparedRequest,
    endpoint: TokenEndpoint,
    session: requests.Session,
    settings: SendSettings,
    cancellation: Cancellation,
) -> requests.Response:
    options = settings.send_options(session, endpoint.url)
    options["stream"] = True  # read below, with a size limit
    # What our errors and responses carry (they end up pickled into result backends and
    # error trackers) is a copy without the key; the request itself stays as it was sent,
    # for mocking libraries' call logs.
    redacted = prepared.copy()
    redacted.body = REDACTED_BODY
    try:
        response: requests.Response = session.send(
            prepared,
            timeout=endpoint.timeout,
            allow_redirects=False,  # never carry the key to wherever a redirect points
            **options,
        )
    except Exception as exc:
        if isinstance(exc, requests.RequestException):
            exc.request = redacted
        elif isinstance(exc, OSError):  # requests' check of verify= and cert= paths
            raise unusable_tls_files(endpoint, exc, TLS_FIXES) from exc
        raise failure(
            endpoint,
            exc,
            cancellation,
            timed_out=isinstance(exc, requests.Timeout),
            tls_fixes=TLS_FIXES,
        ) from exc
    response.request = redacted
    return response


def _read(response: requests.Response, endpoint: TokenEndpoint, api_key: str) -> Answer:
    """The answer, its body read in small steps and refused past the limit."""
    answer_from = f"token response from {endpoint.safe_url} (HTTP {response.status_code})"
    if declared_too_large(response.headers):
        raise _with_response(too_large(answer_from), response)
    try:
        body = limited(_chunks(response, endpoint), answer_from)
    except TokenResponseError as error:
        raise _with_response(error, response) from None
    response._content = body_kept_for_errors(response.status_code, body, api_key)
    response.reason = (response.reason or "").replace(api_key, "***")
    return Answer(response.status_code, reason_phrase(response), response.headers, body, response)


def _chunks(response: requests.Response, endpoint: TokenEndpoint) -> Iterator[bytes]:
    stream = response.iter_content(chunk_size=READ_STEP)
    while True:
        try:
            chunk = next(stream, b"")
        except requests.RequestException as exc:
            raise TokenRequestError(
                f"token response from {endpoint.safe_url} broke off: {type(exc).__name__}"
            ) from exc
        if not chunk:
            return
        yield chunk


def _with_response(error: TokenResponseError, response: requests.Response) -> TokenResponseError:
    error.response = response
    return error


_current_cancellation: ContextVar[Cancellation | None] = ContextVar(
    "requests_opsnow_cancellation", default=None
)
"""The cancellation of the fetch running in this thread, for the sockets it opens."""


class _CancellableAdapter(HTTPAdapter):
    """An adapter whose connections register with the fetch's cancellation.

    A server that answers one byte a second never trips a read timeout (it
    applies to each read); when the fetch outlives its bound, the watchdog shuts the socket and
    the fetching thread's read fails at once.
    """

    # cast: the type stubs of some requests releases leave these methods untyped.
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        cast(Any, super()).init_poolmanager(*args, **kwargs)
        _make_cancellable(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = cast(Any, super()).proxy_manager_for(proxy, **proxy_kwargs)
        _make_cancellable(manager)
        return manager


def _make_cancellable(manager: Any) -> None:
    manager.pool_classes_by_scheme = {
        scheme: _cancellable_pool(pool_class)
        for scheme, pool_class in manager.pool_classes_by_scheme.items()
    }


@functools.cache
def _cancellable_pool(pool_class: type[Any]) -> type[Any]:
    if getattr(pool_class, "_opsnow_cancellable", False):
        return pool_class
    connection = _cancellable_connection(pool_class.ConnectionCls)
    return type(
        pool_class.__name__,
        (pool_class,),
        {"ConnectionCls": connection, "_opsnow_cancellable": True},
    )


@functools.cache
def _cancellable_connection(connection_class: type[Any]) -> type[Any]:
    def connect(self: Any) -> None:
        connection_class.connect(self)
        cancellation = _current_cancellation.get()
        sock = getattr(self, "sock", None)
        if cancellation is not None and sock is not None:
            cancellation.on_cancel(lambda: _shut_down(sock))

    return type(connection_class.__name__, (connection_class,), {"connect": connect})


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own shutdown, not SSLSocket's: that one drops the TLS state under
    # the thread that is reading, which then fails with an AttributeError.
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
