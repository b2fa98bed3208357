"""The token request over httpx, blocking and async.

The policy (retries, limits, turning answers into tokens or errors) is
``_exchange``'s; this module only sends and reads with httpx. The body is
decompressed here, step by step, rather than by httpx, which inflates each
network read whole: a compressed bomb must stop after one small step.
"""

from __future__ import annotations

import os
import ssl
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx

from ._exchange import (
    READ_STEP,
    REDACTED_BODY,
    TOKEN_REQUEST_HEADERS,
    Answer,
    TokenEndpoint,
    collector,
    declared_too_large,
    failure,
    limited,
    run_with_retries,
    run_with_retries_async,
    token_from_answer,
    token_request_json,
    too_large,
    unusable_tls_files,
)
from ._lifecycle import Cancellation
from ._token import Token
from .errors import TokenRequestError, TokenResponseError

TLS_FIXES = (
    "OpsNowAuth(verify='/path/to/ca.pem') (requests_opsnow.httpx), or SSL_CERT_FILE=/path/to/ca.pem"
)
"""The ways an httpx user trusts a corporate CA, named by TLS errors."""

ACCEPTED_ENCODINGS = "gzip, deflate"
"""The encodings this module can decompress step by step."""


class ClientSettings:
    """TLS and proxy settings for token requests, with httpx's meanings.

    ``verify``: a CA bundle path (or folder), an ``ssl.SSLContext``, or a bool;
    ``cert``: a client certificate file, or ``(certfile, keyfile)``; ``proxy``:
    a proxy URL; ``trust_env``: read ``SSL_CERT_FILE``, ``HTTPS_PROXY``,
    ``NO_PROXY``... from the environment, as httpx does.
    """

    __slots__ = ("cert", "proxy", "trust_env", "verify")

    def __init__(
        self,
        *,
        verify: bool | str | ssl.SSLContext | None = None,
        cert: str | tuple[str, str] | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
    ) -> None:
        self.verify = verify
        self.cert = cert
        self.proxy = proxy
        self.trust_env = trust_env

    def client_options(self, endpoint: TokenEndpoint) -> dict[str, Any]:
        connect, read = endpoint.timeout if isinstance(endpoint.timeout, tuple) else (
            endpoint.timeout, endpoint.timeout,
        )  # fmt: skip
        options: dict[str, Any] = {
            "timeout": httpx.Timeout(read, connect=connect),
            "follow_redirects": False,  # never carry the key to wherever a redirect points
            "trust_env": self.trust_env,
            "verify": self._verify(endpoint),
        }
        if self.proxy is not None:
            options["proxy"] = self.proxy
        if endpoint.url.startswith("http:"):  # loopback only, and never through a proxy
            options["trust_env"] = False
            options.pop("proxy", None)
        return options

    def _verify(self, endpoint: TokenEndpoint) -> bool | ssl.SSLContext:
        """What httpx takes: a bool or a context (it no longer wants paths or ``cert=``).

        A CA or certificate file that cannot be loaded is a :class:`TokenRequestError`,
        as for requests, which reads them when it sends.
        """
        try:
            return self._context()
        except OSError as exc:  # ssl.SSLError too
            raise unusable_tls_files(endpoint, exc, TLS_FIXES) from exc

    def _context(self) -> bool | ssl.SSLContext:
        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        if not isinstance(self.verify, str) and self.cert is None:
            return True if self.verify is None else self.verify
        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif isinstance(self.verify, str) and os.path.isdir(self.verify):
            context = ssl.create_default_context(capath=self.verify)
        elif isinstance(self.verify, str):
            context = ssl.create_default_context(cafile=self.verify)
        else:
            context = ssl.create_default_context()
        if self.cert is not None:
            certfile, keyfile = self.cert if isinstance(self.cert, tuple) else (self.cert, None)
            context.load_cert_chain(certfile, keyfile)
        return context


def fetch_token(
    endpoint: TokenEndpoint, api_key: str, settings: ClientSettings, cancellation: Cancellation
) -> Token:
    """Exchange ``api_key`` for a token with a blocking httpx client of its own."""
    with httpx.Client(**settings.client_options(endpoint)) as client:
        cancellation.on_cancel(client.close)  # the watchdog: a trickling answer stops here

        def attempt() -> Token:
            return _attempt(client, endpoint, api_key, cancellation)

        return run_with_retries(attempt, endpoint, cancellation)


async def fetch_token_async(
    endpoint: TokenEndpoint, api_key: str, settings: ClientSettings, cancellation: Cancellation
) -> Token:
    """Exchange ``api_key`` for a token with an async httpx client of its own.

    The client is built in a worker thread: building one loads a CA bundle
    (tens of milliseconds), which would stall the event loop and every other
    request on it.
    """
    import anyio

    options = settings.client_options
    client = await anyio.to_thread.run_sync(lambda: httpx.AsyncClient(**options(endpoint)))
    async with client:

        async def attempt() -> Token:
            return await _attempt_async(client, endpoint, api_key, cancellation)

        return await run_with_retries_async(attempt, endpoint, cancellation)


def _attempt(
    client: httpx.Client, endpoint: TokenEndpoint, api_key: str, cancellation: Cancellation
) -> Token:
    request, redacted = _requests(client, endpoint, api_key)
    try:
        response = client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise _failure(endpoint, exc, redacted, cancellation) from exc
    try:
        response.request = redacted
        body = limited(
            _decoded(_raw(response, endpoint), response), _answer_from(response, endpoint)
        )
    except TokenResponseError as error:
        _carry(error, response)
        raise
    finally:
        response.close()
    return token_from_answer(_answer(response, body), endpoint, api_key)


async def _attempt_async(
    client: httpx.AsyncClient, endpoint: TokenEndpoint, api_key: str, cancellation: Cancellation
) -> Token:
    request, redacted = _requests(client, endpoint, api_key)
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise _failure(endpoint, exc, redacted, cancellation) from exc
    try:
        response.request = redacted
        collected = collector(_answer_from(response, endpoint))
        decompress = _decompressor(response)
        async for raw in _raw_async(response, endpoint):
            for chunk in decompress(raw):
                collected.add(chunk)
        body = collected.body()
    except TokenResponseError as error:
        _carry(error, response)
        raise
    finally:
        await response.aclose()
    return token_from_answer(_answer(response, body), endpoint, api_key)


def _requests(
    client: httpx.Client | httpx.AsyncClient, endpoint: TokenEndpoint, api_key: str
) -> tuple[httpx.Request, httpx.Request]:
    """The token request, and the copy without the key that errors and responses carry."""
    headers = {**TOKEN_REQUEST_HEADERS, "Accept-Encoding": ACCEPTED_ENCODINGS}
    request = client.build_request(
        "POST", endpoint.url, json=token_request_json(api_key), headers=headers
    )
    redacted = httpx.Request("POST", endpoint.url, headers=request.headers, content=REDACTED_BODY)
    return request, redacted


def _failure(
    endpoint: TokenEndpoint,
    error: httpx.HTTPError,
    redacted: httpx.Request,
    cancellation: Cancellation,
) -> TokenRequestError:
    if isinstance(error, httpx.RequestError):
        error.request = redacted
    return failure(
        endpoint,
        error,
        cancellation,
        timed_out=isinstance(error, httpx.TimeoutException),
        tls_fixes=TLS_FIXES,
    )


def _carry(error: TokenResponseError, response: httpx.Response) -> TokenResponseError:
    """Give ``error`` the httpx response, as requests errors carry requests responses."""
    cast(Any, error).response = response
    return error


def _answer_from(response: httpx.Response, endpoint: TokenEndpoint) -> str:
    return f"token response from {endpoint.safe_url} (HTTP {response.status_code})"


def _answer(response: httpx.Response, body: bytes) -> Answer:
    return Answer(response.status_code, response.reason_phrase, response.headers, body, response)


def _raw(response: httpx.Response, endpoint: TokenEndpoint) -> Iterator[bytes]:
    if declared_too_large(response.headers):
        raise too_large(_answer_from(response, endpoint))
    try:
        yield from response.iter_raw(READ_STEP)
    except httpx.HTTPError as exc:
        raise _broke_off(endpoint, exc) from exc


async def _raw_async(response: httpx.Response, endpoint: TokenEndpoint) -> AsyncIterator[bytes]:
    if declared_too_large(response.headers):
        raise too_large(_answer_from(response, endpoint))
    try:
        async for chunk in response.aiter_raw(READ_STEP):
            yield chunk
    except httpx.HTTPError as exc:
        raise _broke_off(endpoint, exc) from exc


def _broke_off(endpoint: TokenEndpoint, error: Exception) -> TokenRequestError:
    return TokenRequestError(
        f"token response from {endpoint.safe_url} broke off: {type(error).__name__}"
    )


def _decoded(raw: Iterator[bytes], response: httpx.Response) -> Iterator[bytes]:
    decompress = _decompressor(response)
    for chunk in raw:
        yield from decompress(chunk)


def _decompressor(response: httpx.Response) -> Any:
    """A function from raw bytes to decoded chunks of at most :data:`READ_STEP` bytes each."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return lambda raw: [raw] if raw else []
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _carry(
            TokenResponseError(
                f"token response is encoded as {encoding!r}, which was not asked for"
            ),
            response,
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header

    def decompress(raw: bytes) -> Iterator[bytes]:
        data = raw
        while data:
            try:
                chunk = inflater.decompress(data, READ_STEP)
            except zlib.error:
                raise _carry(
                    TokenResponseError("token response is not valid compressed data"), response
                ) from None
            if chunk:
                yield chunk
            data = inflater.unconsumed_tail

    return decompress
