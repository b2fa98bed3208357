"""The token exchange: one POST of the API key, retried when the failure is transient.

This module owns the wire format of the token request, the retry policy and
the mapping of failures to exceptions. It knows nothing about caching.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from typing import Any, Union

import requests
from requests.adapters import HTTPAdapter

from . import _clock
from ._error_body import read_error_body, reason_phrase
from ._hosts import safe_url
from ._lifecycle import Cancellation
from ._token import Token, parse_token_payload
from .errors import InvalidApiKeyError, TokenRequestError, TokenResponseError

log = logging.getLogger("requests_opsnow")

Timeout = Union[float, tuple[float, float]]

REJECTED_KEY_STATUSES = frozenset({400, 401, 403})
"""Statuses meaning "this key is wrong": retrying cannot help."""

BACKOFF_BASE = 0.5
"""First retry waits up to this many seconds; each further retry doubles it."""

BACKOFF_CAP = 8.0
"""No single backoff sleep is longer than this (unless Retry-After asks for more)."""

RETRY_BUDGET = 30.0
"""Total seconds spent sleeping between attempts; past it the last error is raised."""

_MAX_MESSAGE = 200

MAX_RESPONSE_BYTES = 64 * 1024
"""The largest token response read, after decompression: a token is at most
``MAX_TOKEN_LENGTH`` characters, so anything this big is not a token response."""

_READ_STEP = 1024
"""Bytes read at a time: a compressed bomb inflates at most ~1 MB per step."""

REDACTED_BODY = b'{"apiKey": "[redacted]"}'
"""The body of the token request as the errors and responses we hand out show it."""


TOKEN_REQUEST_HEADERS = {
    "Accept": "application/json",
    # Never from or into an HTTP cache (requests-cache, a caching proxy): a cached answer
    # would hand back a revoked token, and a stored request would hold the key.
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}


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


class TokenEndpoint:
    """Where and how to exchange the key for a token."""

    __slots__ = ("max_retries", "timeout", "url")

    def __init__(self, url: str, timeout: Timeout, max_retries: int) -> None:
        self.url = url
        self.timeout = timeout
        self.max_retries = max_retries

    @property
    def safe_url(self) -> str:
        """The URL without userinfo, query or fragment, fit for messages."""
        return safe_url(self.url)

    @property
    def bound(self) -> float:
        """The longest a fetch may take: each attempt's connect and read time, and the backoff.

        Waiters stop the fetch past this (``docs/design.md``, "Token lifecycle"):
        a read timeout alone applies to each read, so a server that trickles its
        answer could otherwise hold a fetch forever.
        """
        connect, read = self.timeout if isinstance(self.timeout, tuple) else (self.timeout,) * 2
        backoff = RETRY_BUDGET if self.max_retries else 0.0
        return (self.max_retries + 1) * (connect + read) + backoff


def fetch_token(
    endpoint: TokenEndpoint,
    api_key: str,
    session: requests.Session | None,
    settings: SendSettings,
    cancellation: Cancellation,
) -> Token:
    """Exchange ``api_key`` for a token, retrying transient failures.

    ``session`` is the caller's, used as given; without one, a private session
    lives for this fetch only (a token is fetched once a lifetime: an idle
    connection kept for the next one would help nobody). Its sockets close as
    soon as ``cancellation`` is cancelled (waiters gave up: the fetch outlived
    :attr:`TokenEndpoint.bound`). Raises :class:`InvalidApiKeyError`,
    :class:`TokenRequestError` or :class:`TokenResponseError`; neither their
    messages nor anything they carry hold the key.
    """
    context = _current_cancellation.set(cancellation)
    try:
        if session is not None:
            return _with_retries(endpoint, api_key, session, settings, cancellation)
        with requests.Session() as private:
            private.trust_env = settings.trust_env
            for prefix in ("https://", "http://"):
                private.mount(prefix, _CancellableAdapter())
            return _with_retries(endpoint, api_key, private, settings, cancellation)
    finally:
        _current_cancellation.reset(context)


def _with_retries(
    endpoint: TokenEndpoint,
    api_key: str,
    session: requests.Session,
    settings: SendSettings,
    cancellation: Cancellation,
) -> Token:
    slept = 0.0
    attempt = 0
    while True:
        try:
            return _attempt(endpoint, api_key, session, settings, cancellation)
        except TokenRequestError as error:
            delay = _retry_delay(error, attempt)
            if not _is_transient(error) or cancellation.cancelled:
                raise
            if attempt >= endpoint.max_retries or slept + delay > RETRY_BUDGET:
                if attempt == 0:
                    raise
                raise TokenRequestError(
                    f"{error} (gave up after {attempt + 1} attempts)", response=error.response
                ) from error.__cause__
            attempt += 1
            slept += delay
            log.debug(
                "token request failed (%s); retry %d of %d in %.2f s",
                _failure_kind(error),
                attempt,
                endpoint.max_retries,
                delay,
            )
            _clock.sleep(delay)


def _attempt(
    endpoint: TokenEndpoint,
    api_key: str,
    session: requests.Session,
    settings: SendSettings,
    cancellation: Cancellation,
) -> Token:
    log.debug("requesting a token from %s", endpoint.safe_url)
    request = requests.Request(
        "POST", endpoint.url, json={"apiKey": api_key}, headers=TOKEN_REQUEST_HEADERS, auth=_no_auth
    )
    prepared = session.prepare_request(request)
    with _send(prepared, endpoint, session, settings, cancellation) as response:
        _read_limited(response, endpoint)
        return _token_from(response, endpoint, api_key)


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
        raise _request_failure(endpoint, exc, cancellation) from exc
    response.request = redacted
    return response


def _request_failure(
    endpoint: TokenEndpoint, error: Exception, cancellation: Cancellation
) -> Exception:
    if cancellation.cancelled:
        return TokenRequestError(
            f"token request to {endpoint.safe_url} stopped after {endpoint.bound:.0f} s"
        )
    if isinstance(error, requests.exceptions.SSLError):
        return TokenRequestError(_tls_failure(endpoint, error))
    if isinstance(error, requests.Timeout):
        return TokenRequestError(f"token request to {endpoint.safe_url} timed out")
    if isinstance(error, requests.RequestException):
        return TokenRequestError(
            f"token request to {endpoint.safe_url} failed: {type(error).__name__}"
        )
    return error


def _read_limited(response: requests.Response, endpoint: TokenEndpoint) -> None:
    """Read the body, decompressed; refuse it past :data:`MAX_RESPONSE_BYTES`.

    Read in small steps, so that a compressed bomb is stopped after at most one
    step's worth of inflation.
    """
    too_large = TokenResponseError(
        f"token response from {endpoint.safe_url} (HTTP {response.status_code}) is larger"
        f" than {MAX_RESPONSE_BYTES} bytes",
        response=response,
    )
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    stream = response.iter_content(chunk_size=_READ_STEP)
    while True:
        try:
            chunk = next(stream, b"")
        except requests.RequestException as exc:
            raise TokenRequestError(
                f"token response from {endpoint.safe_url} broke off: {type(exc).__name__}"
            ) from exc
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise too_large
        chunks.append(chunk)
    response._content = b"".join(chunks)  # response.json() and .text use what was read


_current_cancellation: ContextVar[Cancellation | None] = ContextVar(
    "requests_opsnow_cancellation", default=None
)
"""The cancellation of the fetch running in this thread, for the sockets it opens."""


class _CancellableAdapter(HTTPAdapter):
    """An adapter whose connections register with the fetch's cancellation.

    A server that answers one byte a second never trips a read timeout (it
    applies to each read); when waiters give up, they shut the socket down and
    the fetching thread's read fails at once.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _make_cancellable(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
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


_TLS_REASONS = (
    re.compile(r"certificate verify failed: [^'\"()]+"),
    re.compile(r"\[SSL: ([A-Z_]+)\]"),
)
"""What OpenSSL said, most readable first: the verification failure, else its error code."""


def _tls_failure(endpoint: TokenEndpoint, error: requests.exceptions.SSLError) -> str:
    """What went wrong with TLS, and the three ways to trust a corporate CA."""
    text = str(error)
    found = next((match for match in (p.search(text) for p in _TLS_REASONS) if match), None)
    reason = found.group(found.lastindex or 0).strip() if found else type(error).__name__
    return (
        f"TLS error on the token request to {endpoint.safe_url}: {reason}. If a proxy or"
        " gateway inspects TLS, trust its CA: OpsNowAuth(verify='/path/to/ca.pem'),"
        " REQUESTS_CA_BUNDLE=/path/to/ca.pem, or OpsNowSession().verify = '/path/to/ca.pem'"
    )


def _token_from(response: requests.Response, endpoint: TokenEndpoint, api_key: str) -> Token:
    status = response.status_code
    if 200 <= status < 300:
        return _parse_success(response, endpoint, api_key)
    detail = _describe_failure(response, api_key)
    message = f"token request to {endpoint.safe_url} failed: {detail}"
    if status in REJECTED_KEY_STATUSES:
        raise InvalidApiKeyError(
            f"the OpsNow API key was rejected by {endpoint.safe_url}: {detail}",
            response=response,
        )
    raise TokenRequestError(message, response=response)


def _parse_success(response: requests.Response, endpoint: TokenEndpoint, api_key: str) -> Token:
    where = f"token response from {endpoint.safe_url} (HTTP {response.status_code})"
    try:
        payload: Any = response.json()
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        content_type = response.headers.get("Content-Type", "no Content-Type")
        raise TokenResponseError(
            f"{where} is not JSON ({content_type})", response=response
        ) from None
    if isinstance(payload, dict) and payload.get("status") == "fail":
        error = _server_error(payload, api_key)
        raise TokenResponseError(f"{where} reports failure: {error}", response=response)
    try:
        return parse_token_payload(payload, now=_clock.now())
    except TokenResponseError as exc:
        raise TokenResponseError(f"{where}: {exc}", response=response) from None


def _describe_failure(response: requests.Response, api_key: str) -> str:
    phrase = reason_phrase(response)[:_MAX_MESSAGE]
    text = _masked(f"HTTP {response.status_code} {phrase}", api_key).rstrip()
    try:
        payload = response.json()
    except (ValueError, RecursionError):
        return text
    server_message = _server_error(payload, api_key)
    return f"{text}: {server_message}" if server_message else text


def _server_error(payload: Any, api_key: str) -> str:
    """The server's own error message, cut short and with the key masked."""
    message = read_error_body(payload).message
    return _masked(message, api_key)[:_MAX_MESSAGE] if message is not None else ""


def _masked(text: str, api_key: str) -> str:
    """``text`` from a server on one line (no forged log lines), with the key masked."""
    return " ".join(text.split()).replace(api_key, "***")


def _is_transient(error: TokenRequestError) -> bool:
    """Connection failures, timeouts, 429 and 5xx may succeed on a later attempt; TLS errors not."""
    response = error.response
    if response is None:
        return not isinstance(error.__cause__, requests.exceptions.SSLError)
    return response.status_code == 429 or response.status_code >= 500


def _retry_delay(error: TokenRequestError, attempt: int) -> float:
    """Full-jitter exponential backoff, or the server's Retry-After when it gives one."""
    response = error.response
    retry_after = _retry_after(response) if response is not None else None
    if retry_after is not None:
        return retry_after
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def _retry_after(response: requests.Response) -> float | None:
    """The server's ``Retry-After`` in seconds from now (seconds or an HTTP date); None if
    absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value)
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _seconds_until(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        return when.timestamp() - _clock.now()
    except (ValueError, OverflowError):  # a date Python cannot place in time
        return None


def _failure_kind(error: TokenRequestError) -> str:
    """``HTTP 503`` or the exception's type name, for the retry log line."""
    if error.response is not None:
        return f"HTTP {error.response.status_code}"
    cause = error.__cause__
    return type(cause).__name__ if cause is not None else "error"
