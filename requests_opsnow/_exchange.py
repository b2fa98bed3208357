"""The token exchange, whatever the HTTP client: wire format, retry policy, reading answers.

A token request is one POST of the API key. This module owns what is common
to every client that sends it: the headers, the retry policy and its bounds,
the limits on what is read back, and how an answer becomes a :class:`Token`
or an exception. The clients' own sending lives in ``_exchange_requests``
(requests) and ``_exchange_httpx`` (httpx, sync and async). It knows nothing
about caching.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import ssl
from collections.abc import Awaitable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Callable, NamedTuple, Union

from . import _clock
from ._error_body import read_error_body
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

READ_STEP = 1024
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


def token_request_json(api_key: str) -> dict[str, str]:
    return {"apiKey": api_key}


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


class Answer(NamedTuple):
    """What the token endpoint answered, read within the limits, whatever the client."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    response: Any  # the client's own response object, carried by the errors raised


def run_with_retries(
    attempt: Callable[[], Token], endpoint: TokenEndpoint, cancellation: Cancellation
) -> Token:
    """``attempt()`` until it gives a token, retrying transient failures within the budget."""
    retries = _Retries(endpoint, cancellation)
    while True:
        try:
            return attempt()
        except TokenRequestError as error:
            _clock.sleep(retries.after(error))


async def run_with_retries_async(
    attempt: Callable[[], Awaitable[Token]], endpoint: TokenEndpoint, cancellation: Cancellation
) -> Token:
    """:func:`run_with_retries` for a coroutine attempt; the backoff never blocks the loop."""
    retries = _Retries(endpoint, cancellation)
    while True:
        try:
            return await attempt()
        except TokenRequestError as error:
            await _clock.sleep_async(retries.after(error))


class _Retries:
    """The retry policy: which failures are retried, how long to wait, when to give up."""

    def __init__(self, endpoint: TokenEndpoint, cancellation: Cancellation) -> None:
        self.endpoint = endpoint
        self.cancellation = cancellation
        self.attempt = 0
        self.slept = 0.0

    def after(self, error: TokenRequestError) -> float:
        """The wait before the next attempt; raises (``error`` or a summary) to give up."""
        delay = _retry_delay(error, self.attempt)
        if not _is_transient(error) or self.cancellation.cancelled:
            raise error
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


def limited(chunks: Iterable[bytes], answer_from: str) -> bytes:
    """The chunks joined, refused past :data:`MAX_RESPONSE_BYTES` before they are all read."""
    collected = _Collected(answer_from)
    for chunk in chunks:
        collected.add(chunk)
    return collected.body()


class _Collected:
    """A response body read step by step, within :data:`MAX_RESPONSE_BYTES`."""

    def __init__(self, answer_from: str) -> None:
        self.answer_from = answer_from
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_RESPONSE_BYTES:
            raise too_large(self.answer_from)
        self.chunks.append(chunk)

    def body(self) -> bytes:
        return b"".join(self.chunks)


def collector(answer_from: str) -> _Collected:
    """For clients that read asynchronously: ``add()`` each chunk, then ``body()``."""
    return _Collected(answer_from)


def too_large(answer_from: str) -> TokenResponseError:
    return TokenResponseError(f"{answer_from} is larger than {MAX_RESPONSE_BYTES} bytes")


def declared_too_large(headers: Mapping[str, str]) -> bool:
    declared = headers.get("Content-Length", "")
    return declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES


def body_kept_for_errors(status: int, body: bytes, api_key: str) -> bytes:
    """What the response an error carries keeps of the body (errors get pickled into result
    backends and error trackers): nothing of a 2xx, which may hold a token the server
    issued; an error body with the key masked."""
    if 200 <= status < 300:
        return b""
    for form in {api_key, json.dumps(api_key)[1:-1]}:  # as sent, and as a JSON string has it
        body = body.replace(form.encode(), b"***")
    return body


def token_from_answer(answer: Answer, endpoint: TokenEndpoint, api_key: str) -> Token:
    """The token in a 2xx answer; otherwise the exception the answer calls for."""
    if 200 <= answer.status < 300:
        return _parse_success(answer, endpoint, api_key)
    detail = _describe_failure(answer, api_key)
    if answer.status in REJECTED_KEY_STATUSES:
        raise InvalidApiKeyError(
            f"the OpsNow API key was rejected by {endpoint.safe_url}: {detail}",
            response=answer.response,
        )
    raise TokenRequestError(
        f"token request to {endpoint.safe_url} failed: {detail}", response=answer.response
    )


def _parse_success(answer: Answer, endpoint: TokenEndpoint, api_key: str) -> Token:
    where = f"token response from {endpoint.safe_url} (HTTP {answer.status})"
    payload = _json(answer.body)
    if payload is _NOT_JSON:
        content_type = answer.headers.get("Content-Type", "no Content-Type")
        raise TokenResponseError(f"{where} is not JSON ({content_type})", response=answer.response)
    if isinstance(payload, dict) and payload.get("status") == "fail":
        error = _server_error(payload, api_key)
        raise TokenResponseError(f"{where} reports failure: {error}", response=answer.response)
    try:
        return parse_token_payload(payload, now=_clock.now())
    except TokenResponseError as exc:
        raise TokenResponseError(f"{where}: {exc}", response=answer.response) from None


_NOT_JSON = object()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return _NOT_JSON


def _describe_failure(answer: Answer, api_key: str) -> str:
    text = _masked(f"HTTP {answer.status} {answer.reason}", api_key)[:_MAX_MESSAGE].rstrip()
    payload = _json(answer.body)
    server_message = _server_error(payload, api_key) if payload is not _NOT_JSON else ""
    return f"{text}: {server_message}" if server_message else text


def _server_error(payload: Any, api_key: str) -> str:
    """The server's own error message, cut short and with the key masked."""
    message = read_error_body(payload).message
    return _masked(message, api_key)[:_MAX_MESSAGE] if message is not None else ""


def _masked(text: str, api_key: str) -> str:
    """``text`` from a server on one line (no forged log lines), with the key masked: before
    anything is cut, and in both forms, as sent and with its own whitespace collapsed."""
    one_line = " ".join(text.replace(api_key, "***").split())
    return one_line.replace(" ".join(api_key.split()), "***")


def failure(
    endpoint: TokenEndpoint,
    error: Exception,
    cancellation: Cancellation,
    *,
    timed_out: bool,
    tls_fixes: str,
) -> TokenRequestError:
    """The :class:`TokenRequestError` for a request that got no answer."""
    if cancellation.cancelled:
        return TokenRequestError(
            f"token request to {endpoint.safe_url} stopped after {endpoint.bound:.0f} s"
        )
    if _caused_by_tls(error):
        return TokenRequestError(_tls_failure(endpoint, error, tls_fixes))
    if timed_out:
        return TokenRequestError(f"token request to {endpoint.safe_url} timed out")
    return TokenRequestError(f"token request to {endpoint.safe_url} failed: {type(error).__name__}")


def unusable_tls_files(endpoint: TokenEndpoint, error: OSError, fixes: str) -> TokenRequestError:
    """The CA bundle or client certificate given cannot be loaded: a TLS error, so not
    retried (a missing file does not appear in a second)."""
    detail = error.strerror or str(error) or "unreadable"
    return TokenRequestError(
        f"TLS error on the token request to {endpoint.safe_url}: the CA bundle or client"
        f" certificate given cannot be used ({type(error).__name__}: {detail}); {fixes}"
    )


def _caused_by_tls(error: BaseException) -> bool:
    """Whether ``error`` comes from a TLS failure, however many wrappers the client added."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError) or type(current).__name__ == "SSLError":
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or _wrapped(current)
    return False


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


def _is_transient(error: TokenRequestError) -> bool:
    """Connection failures, timeouts, 429 and 5xx may succeed on a later attempt; TLS errors not."""
    response = error.response
    if response is None:
        return not error.args[0].startswith("TLS error") if error.args else True
    return bool(response.status_code == 429 or response.status_code >= 500)


def _retry_delay(error: TokenRequestError, attempt: int) -> float:
    """Full-jitter exponential backoff, or the server's Retry-After when it gives one."""
    response = error.response
    retry_after = _retry_after(response) if response is not None else None
    if retry_after is not None:
        return retry_after
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def _retry_after(response: Any) -> float | None:
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
