"""The token exchange as a protocol without I/O: what to send, what an answer means, when
to try again.

A token request is one POST of the API key. This module builds it
(:func:`token_request`), turns an answer (status, headers, and a body read
within :data:`MAX_RESPONSE_BYTES`) into a :class:`Token` or the documented
error (:func:`read_answer`), and says how long to wait before the next attempt
(:class:`RetrySchedule`). It sends nothing and calls no client: the transports
(``_transport_requests``; ``_transport_httpx``, blocking and async) send, read,
hand the answer here, and sleep as the schedule says. It knows nothing about
caching.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import re
import ssl
import zlib
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any, NamedTuple, Union

from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from . import _clock
from ._hosts import safe_url
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

LONGEST_RETRY_AFTER = 10 * RETRY_BUDGET
"""A server's ``Retry-After`` is honoured up to this many seconds."""

MAX_RESPONSE_BYTES = 64 * 1024
"""The largest token response read, compressed or not: a token is at most
``MAX_TOKEN_LENGTH`` characters, so anything this big is not a token response."""

READ_STEP = 1024
"""Bytes a transport reads at a time."""

REDACTED_BODY = b'{"apiKey": "[redacted]"}'
"""The body of the token request as the errors and responses we hand out show it."""

_MAX_MESSAGE = 200
_DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})


class TokenEndpoint:
    """Where and how to exchange the key for a token.

    ``bound`` is the longest a fetch may take: each attempt's connect and read
    time, and the backoff. A fetch past it is stopped (``docs/design.md``,
    "Token lifecycle"): a read timeout alone applies to each read, so a server
    that trickles its answer could otherwise hold a fetch forever.
    """

    __slots__ = ("bound", "max_retries", "timeout", "timeouts", "url")

    def __init__(self, url: str, timeout: Timeout, max_retries: int) -> None:
        self.url = url
        self.timeout = timeout
        self.max_retries = max_retries
        self.timeouts = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        backoff = RETRY_BUDGET if max_retries else 0.0
        self.bound = (max_retries + 1) * sum(self.timeouts) + backoff

    @property
    def safe_url(self) -> str:
        """The URL without userinfo, query or fragment, fit for messages."""
        return safe_url(self.url)


class TokenRequest(NamedTuple):
    """The token request, for any client to send as it is (never following redirects)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def token_request(endpoint: TokenEndpoint, api_key: str) -> TokenRequest:
    headers = {
        "Accept": "application/json",
        "Accept-Encoding": "identity",  # a token is small: no inflater, no compressed bombs
        # Never from or into an HTTP cache (requests-cache, a caching proxy): a cached answer
        # would hand back a revoked token, and a stored request would hold the key.
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Content-Type": "application/json",
    }
    return TokenRequest("POST", endpoint.url, headers, json.dumps({"apiKey": api_key}).encode())


# -- reading an answer ---------------------------------------------------------------------------


class Body:
    """An answer's body as a transport reads it, up to one byte past the limit."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; True once past :data:`MAX_RESPONSE_BYTES` (read no more)."""
        self.data += chunk
        return len(self.data) > MAX_RESPONSE_BYTES


def read_answer(
    endpoint: TokenEndpoint,
    api_key: str,
    status: int,
    reason: object,
    headers: Mapping[str, str],
    body: bytes,
    encoding: str,
    response: Any,
) -> Token:
    """The token in a 2xx answer; otherwise the exception the answer calls for.

    ``body`` is what was read (a :class:`Body`'s data), in the content coding
    ``encoding`` ("" once the client has decoded it); ``reason`` the status
    line's phrase as the client has it; ``response`` the client's own response
    object, which the errors carry.
    """
    try:
        body = _decoded(body, encoding)
        if 200 <= status < 300:
            return _token_in(body, headers, api_key)
    except TokenResponseError as error:
        where = f"token response from {endpoint.safe_url} (HTTP {status})"
        raise TokenResponseError(f"{where}{error}", response=response) from None
    detail = _masked(f"HTTP {status} {reason_phrase(reason, status)}", api_key)[
        :_MAX_MESSAGE
    ].rstrip()
    server_message = _server_error(_json(body), api_key)
    if server_message:
        detail += f": {server_message}"
    if status in REJECTED_KEY_STATUSES:
        message = f"the OpsNow API key was rejected by {endpoint.safe_url}: {detail}"
        raise InvalidApiKeyError(message, response=response)
    raise TokenRequestError(
        f"token request to {endpoint.safe_url} failed: {detail}", response=response
    )


def _decoded(body: bytes, encoding: str) -> bytes:
    """``body`` decoded, refused past :data:`MAX_RESPONSE_BYTES` (identity is asked for; a
    server that compresses anyway is inflated at most that far, in one bounded step)."""
    encoding = encoding.strip().lower()
    if encoding not in ("", "identity"):
        if encoding not in _DECODABLE:
            raise TokenResponseError(f" is encoded as {encoding!r}, which was not asked for")
        try:
            body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, MAX_RESPONSE_BYTES + 1)
        except zlib.error:
            raise TokenResponseError(" is not valid compressed data") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise TokenResponseError(f" is larger than {MAX_RESPONSE_BYTES} bytes")
    return body


def _token_in(body: bytes, headers: Mapping[str, str], api_key: str) -> Token:
    """The token in a 2xx body. Otherwise a :class:`TokenResponseError` whose message
    :func:`read_answer` completes, after the answer's origin (hence the leading space)."""
    payload = _json(body)
    if payload is _NOT_JSON:
        raise TokenResponseError(f" is not JSON ({headers.get('Content-Type', 'no Content-Type')})")
    if isinstance(payload, dict) and payload.get("status") == "fail":
        raise TokenResponseError(f" reports failure: {_server_error(payload, api_key)}")
    try:
        return parse_token_payload(payload, now=_clock.now())
    except TokenResponseError as exc:
        raise TokenResponseError(f": {exc}") from None


_NOT_JSON = object()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return _NOT_JSON


def _server_error(payload: Any, api_key: str) -> str:
    """The server's own error message, cut short and with the key masked."""
    message = read_error_body(payload).message
    return _masked(message, api_key)[:_MAX_MESSAGE] if message is not None else ""


def _masked(text: str, api_key: str) -> str:
    """``text`` from a server on one line (no forged log lines), with the key masked: before
    anything is cut, and in both forms, as sent and with its own whitespace collapsed."""
    one_line = " ".join(text.replace(api_key, "***").split())
    return one_line.replace(" ".join(api_key.split()), "***")


def kept_for_errors(status: int, body: bytes, api_key: str) -> bytes:
    """What the response an error carries keeps of the body (errors get pickled into result
    backends and error trackers): nothing of a 2xx, which may hold a token the server
    issued; an error body with the key masked."""
    if 200 <= status < 300:
        return b""
    for form in {api_key, json.dumps(api_key)[1:-1]}:  # as sent, and as a JSON string has it
        body = body.replace(form.encode(), b"***")
    return body


# -- no answer -------------------------------------------------------------------------------


def failure(
    endpoint: TokenEndpoint, error: Exception, *, stopped: bool, timed_out: bool, tls_fixes: str
) -> TokenRequestError:
    """The :class:`TokenRequestError` for a request that got no answer (``stopped``: its
    flight's bound cut it off): what went wrong, in words, and the client's error type."""
    if stopped:
        return TokenRequestError(
            f"token request to {endpoint.safe_url} stopped after {endpoint.bound:.0f} s"
            f" ({BOUND_SETTINGS})"
        )
    causes = list(_causes(error))
    if any(isinstance(c, ssl.SSLError) or type(c).__name__ == "SSLError" for c in causes):
        return _final(TokenRequestError(_tls_failure(endpoint, error, tls_fixes)))
    reason = next((_REASONS[type(c).__name__] for c in causes if type(c).__name__ in _REASONS), "")
    if not reason and timed_out:
        reason = "timed out"
    if not reason:
        reason = next((_errno_reason(c) for c in causes if _errno_reason(c)), "failed")
    if reason.startswith("timed out"):
        reason += f"; {BOUND_SETTINGS}"
    return TokenRequestError(
        f"token request to {endpoint.safe_url} failed: {reason} ({type(error).__name__})"
    )


BOUND_SETTINGS = (
    "a token request is bounded by OpsNowAuth(timeout=, max_retries=), not by the timeout= of"
    " the call that needs the token"
)
"""Said wherever a token request runs out of time: an auth cannot see a call's own timeout."""

_REASONS = {
    "ConnectionRefusedError": "connection refused",
    "gaierror": "the host name could not be resolved",
    "NameResolutionError": "the host name could not be resolved",
    "ConnectTimeout": "timed out connecting",
    "ConnectTimeoutError": "timed out connecting",
    "ReadTimeout": "timed out waiting for the answer",
    "ReadTimeoutError": "timed out waiting for the answer",
    "ConnectionResetError": "connection reset",
    "RemoteDisconnected": "connection closed without an answer",
}
"""What a cause in a client's exception chain means, by its type's name (urllib3, httpx
and the standard library each have their own)."""


def _errno_reason(error: BaseException) -> str:
    number = getattr(error, "errno", None)
    return {errno.ENETUNREACH: "network unreachable", errno.EHOSTUNREACH: "host unreachable"}.get(
        number if isinstance(number, int) else -1, ""
    )


def mock_refusal(endpoint: TokenEndpoint, message: str, api_key: str) -> TokenRequestError:
    """A mocking library (``responses``, ``requests-mock``) has no mock for the token
    request: its own explanation, at once (no retry can change a test's mocks)."""
    return _final(
        TokenRequestError(
            f"token request to {endpoint.safe_url} was refused by a mocking library (is the"
            f" token endpoint mocked?): {_masked(message, api_key)}"
        )
    )


def broke_off(endpoint: TokenEndpoint, error: Exception) -> TokenRequestError:
    return TokenRequestError(
        f"token response from {endpoint.safe_url} broke off: {type(error).__name__}"
    )


def unusable_tls_files(endpoint: TokenEndpoint, error: OSError, fixes: str) -> TokenRequestError:
    """The CA bundle or client certificate given cannot be loaded: a TLS error, so not
    retried (a missing file does not appear in a second)."""
    detail = error.strerror or str(error) or "unreadable"
    return _final(
        TokenRequestError(
            f"TLS error on the token request to {endpoint.safe_url}: the CA bundle or client"
            f" certificate given cannot be used ({type(error).__name__}: {detail}); {fixes}"
        )
    )


def _final(error: TokenRequestError) -> TokenRequestError:
    """Mark ``error`` as one that no retry can help (a TLS failure)."""
    error._opsnow_final = True  # type: ignore[attr-defined]
    return error


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what caused it, however many wrappers the client added."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or _wrapped(current)


def _wrapped(error: BaseException) -> BaseException | None:
    """The exception a client put in ``args`` (urllib3's MaxRetryError.reason, say)."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    return next((arg for arg in error.args if isinstance(arg, BaseException)), None)


_TLS_REASONS = (
    re.compile(r"certificate verify failed: [^'\"()]+"),
    re.compile(r"\[SSL: ([A-Z_]+)\]"),
)
"""What OpenSSL said, most readable first: the verification failure, else its error code."""


def _tls_failure(endpoint: TokenEndpoint, error: BaseException, fixes: str) -> str:
    """What went wrong with TLS, and the ways to trust a corporate CA."""
    text = str(error)
    found = next((match for match in (p.search(text) for p in _TLS_REASONS) if match), None)
    reason = found.group(found.lastindex or 0).strip() if found else type(error).__name__
    return (
        f"TLS error on the token request to {endpoint.safe_url}: {reason}. If a proxy or"
        f" gateway inspects TLS, trust its CA: {fixes}"
    )


# -- when to try again -------------------------------------------------------------------------


class RetrySchedule:
    """Which failed attempts are tried again, after how long, and when to give up.

    Connection failures, timeouts, 429 and 5xx are transient; TLS failures and
    other statuses are not. The wait is the server's ``Retry-After``, else a
    full-jitter exponential backoff; at most :data:`RETRY_BUDGET` seconds in all.
    """

    def __init__(self, endpoint: TokenEndpoint) -> None:
        self.endpoint = endpoint
        self.attempt = 0
        self.slept = 0.0

    def delay_after(self, error: TokenRequestError, *, stopped: bool) -> float:
        """The wait before the next attempt; raises (``error`` or a summary) to give up."""
        if stopped or not _is_transient(error):
            raise error
        delay = _retry_delay(error, self.attempt)
        if self.attempt >= self.endpoint.max_retries or self.slept + delay > RETRY_BUDGET:
            if self.attempt == 0:
                raise error
            raise TokenRequestError(
                f"{error} (gave up after {self.attempt + 1} attempts)", response=error.response
            ) from error.__cause__
        self.attempt += 1
        self.slept += delay
        log.debug(
            "token request failed (%s); retry %d of %d in %.2f s",
            _failure_kind(error),
            self.attempt,
            self.endpoint.max_retries,
            delay,
        )
        return delay


def _is_transient(error: TokenRequestError) -> bool:
    response = error.response
    if response is None:
        return not getattr(error, "_opsnow_final", False)
    return bool(response.status_code == 429 or response.status_code >= 500)


def _retry_delay(error: TokenRequestError, attempt: int) -> float:
    """The server's Retry-After when it gives one, else full-jitter exponential backoff."""
    response = error.response
    wait = retry_after(response.headers) if response is not None else None
    if wait is not None:
        return wait
    return full_jitter(BACKOFF_BASE, BACKOFF_CAP, attempt)


def full_jitter(first: float, cap: float, attempt: int) -> float:
    """A random wait between 0 and ``first`` doubled ``attempt`` times, capped at ``cap``
    ("full jitter": callers that failed together do not try again together). The retries
    of one token request and the backoff windows between flights both wait this way."""
    return random.uniform(0, min(cap, first * 2 ** min(attempt, 32)))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's ``Retry-After`` in seconds from now (whole seconds or an HTTP date, read
    by urllib3); None if absent or unreadable."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = Retry.DEFAULT.parse_retry_after(value)
    except (InvalidHeader, ValueError, OverflowError):
        return None
    return float(min(seconds, LONGEST_RETRY_AFTER))  # no float overflow from 400 digits


def _failure_kind(error: TokenRequestError) -> str:
    """``HTTP 503`` or the exception's type name, for the retry log line."""
    if error.response is not None:
        return f"HTTP {error.response.status_code}"
    cause = error.__cause__
    return type(cause).__name__ if cause is not None else "error"


# -- OpsNow error bodies (the token endpoint's, and the API's: ``session``) ----------------------

_CODE_KEYS = ("code", "Code")
_MESSAGE_KEYS = ("message", "Message")


class ErrorBody(NamedTuple):
    """The server's own code and message, each None when the body does not give one.

    ``{"status": "fail", "error": {"code": 401, "message": "Unauthorized"}}`` is the
    documented shape; published examples also show ``error.code`` as a string, and
    ``{"Code": 1, "Message": "..."}`` at the top level.
    """

    code: int | str | None
    message: str | None


def read_error_body(payload: Any) -> ErrorBody:
    """The code and message of a decoded JSON body; ``(None, None)`` for anything else."""
    if not isinstance(payload, dict):
        return ErrorBody(None, None)
    nested = payload.get("error")
    source = nested if isinstance(nested, dict) else payload
    code = next((source[key] for key in _CODE_KEYS if source.get(key) is not None), None)
    message = next((source[key] for key in _MESSAGE_KEYS if source.get(key) is not None), None)
    if isinstance(code, bool) or not isinstance(code, (int, str)) or code == "":
        code = None
    if not isinstance(message, str) or not message.strip():
        message = None
    return ErrorBody(code, message)


def reason_phrase(reason: object, status: int) -> str:
    """The status line's reason phrase (str or bytes), else the standard one for the status."""
    if isinstance(reason, bytes):
        reason = reason.decode("latin-1")
    if isinstance(reason, str) and reason.strip():
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"
