"""The token exchange: one POST of the API key, retried when the failure is transient.

This module owns the wire format of the token request, the retry policy and
the mapping of failures to exceptions. It knows nothing about caching.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Union

import requests

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

_MAX_MESSAGE = 200


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
        """The longest a fetch may take: every attempt's timeouts and the backoff budget."""
        connect, read = self.timeout if isinstance(self.timeout, tuple) else (self.timeout,) * 2
        return (self.max_retries + 1) * (connect + read) + RETRY_BUDGET


def fetch_token(
    endpoint: TokenEndpoint,
    api_key: str,
    session: requests.Session | None,
    settings: SendSettings,
) -> Token:
    """Exchange ``api_key`` for a token, retrying transient failures.

    ``session`` is the caller's, used as given; without one, a private session
    lives for this fetch only (a token is fetched once a lifetime: an idle
    connection kept for the next one would help nobody). Raises
    :class:`InvalidApiKeyError`, :class:`TokenRequestError` or
    :class:`TokenResponseError`; the key never appears in a message.
    """
    if session is not None:
        return _with_retries(endpoint, api_key, session, settings)
    with requests.Session() as private:
        private.trust_env = settings.trust_env
        return _with_retries(endpoint, api_key, private, settings)


def _with_retries(
    endpoint: TokenEndpoint, api_key: str, session: requests.Session, settings: SendSettings
) -> Token:
    slept = 0.0
    attempt = 0
    while True:
        try:
            return _attempt(endpoint, api_key, session, settings)
        except TokenRequestError as error:
            delay = _retry_delay(error, attempt)
            if not _is_transient(error):
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
                _reason(error),
                attempt,
                endpoint.max_retries,
                delay,
            )
            _clock.sleep(delay)


def _attempt(
    endpoint: TokenEndpoint, api_key: str, session: requests.Session, settings: SendSettings
) -> Token:
    log.debug("requesting a token from %s", endpoint.safe_url)
    request = requests.Request(
        "POST", endpoint.url, json={"apiKey": api_key}, headers=TOKEN_REQUEST_HEADERS, auth=_no_auth
    )
    try:
        prepared = session.prepare_request(request)
        response = session.send(
            prepared,
            timeout=endpoint.timeout,
            allow_redirects=False,  # never carry the key to wherever a redirect points
            **settings.send_options(session, endpoint.url),
        )
    except requests.exceptions.SSLError as exc:
        raise TokenRequestError(_tls_failure(endpoint, exc)) from exc
    except requests.Timeout as exc:
        raise TokenRequestError(f"token request to {endpoint.safe_url} timed out") from exc
    except requests.RequestException as exc:
        raise TokenRequestError(
            f"token request to {endpoint.safe_url} failed: {type(exc).__name__}"
        ) from exc
    with response:
        return _token_from(response, endpoint, api_key)


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
    text = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    try:
        payload = response.json()
    except (ValueError, RecursionError):
        return text
    server_message = _server_error(payload, api_key) if isinstance(payload, dict) else ""
    return f"{text}: {server_message}" if server_message else text


def _server_error(payload: dict[str, Any], api_key: str) -> str:
    """The server's own error message, cut short and with the key masked."""
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else payload.get("message")
    if not isinstance(message, str):
        return ""
    one_line = " ".join(message.split())  # no forged log lines from a server's message
    return one_line.replace(api_key, "***")[:_MAX_MESSAGE]


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
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - _clock.now())


def _reason(error: TokenRequestError) -> str:
    if error.response is not None:
        return f"HTTP {error.response.status_code}"
    cause = error.__cause__
    return type(cause).__name__ if cause is not None else "error"
