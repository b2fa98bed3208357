"""Token requests over httpx, blocking (for threads) and async (for coroutines).

What to send and what an answer means is ``_protocol``'s; this module sends
with a client of its own, reads at most ``MAX_RESPONSE_BYTES`` of the answer,
and sleeps as the retry schedule says.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from typing import Any

import httpx

from . import _clock
from ._lifecycle import Cancellation
from ._protocol import (
    READ_STEP,
    REDACTED_BODY,
    Body,
    RetrySchedule,
    TokenEndpoint,
    broke_off,
    failure,
    read_answer,
    token_request,
    unusable_tls_files,
)
from ._token import Token
from .errors import TokenRequestError

TLS_FIXES = (
    "OpsNowAuth(verify='/path/to/ca.pem') (requests_opsnow.httpx), or SSL_CERT_FILE=/path/to/ca.pem"
)
"""The ways an httpx user trusts a corporate CA, named by TLS errors."""


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
        connect, read = endpoint.timeouts
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


class HttpxTransport:
    """One auth's token requests over httpx, with a client of its own per fetch."""

    __slots__ = ("_api_key", "_settings", "endpoint")

    def __init__(self, endpoint: TokenEndpoint, api_key: str, settings: ClientSettings) -> None:
        self.endpoint = endpoint
        self._api_key = api_key
        self._settings = settings

    def use_key(self, api_key: str) -> None:
        """Send ``api_key`` from the next attempt on (the auth's key source holds another)."""
        self._api_key = api_key

    def __call__(self, cancellation: Cancellation) -> Token:
        """Fetch with a blocking client, for a thread."""
        schedule = RetrySchedule(self.endpoint)
        with httpx.Client(**self._settings.client_options(self.endpoint)) as client:
            cancellation.on_cancel(client.close)  # the watchdog: a trickling answer stops here
            while True:
                try:
                    return self._attempt(client, cancellation)
                except TokenRequestError as error:
                    _clock.sleep(schedule.delay_after(error, stopped=cancellation.cancelled))

    async def fetch_async(self, cancellation: Cancellation) -> Token:
        """Fetch with an async client, for a coroutine.

        The client is built in a worker thread: building one loads a CA bundle
        (tens of milliseconds), which would stall the event loop and every other
        request on it.
        """
        import anyio

        schedule = RetrySchedule(self.endpoint)
        async with await anyio.to_thread.run_sync(self._async_client) as client:
            while True:
                try:
                    return await self._attempt_async(client, cancellation)
                except TokenRequestError as error:
                    await _clock.sleep_async(
                        schedule.delay_after(error, stopped=cancellation.cancelled)
                    )

    def _attempt(self, client: httpx.Client, cancellation: Cancellation) -> Token:
        api_key = self._api_key  # one key for the attempt, though the auth may switch
        request, redacted = self._requests(client, cancellation, api_key)
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._failure(exc, redacted, cancellation) from exc
        with self._reading() as body, contextlib.closing(response):
            for chunk in response.iter_raw(READ_STEP):
                if body.add(chunk):
                    break
        return self._answer(response, redacted, body.data, api_key)

    async def _attempt_async(self, client: httpx.AsyncClient, cancellation: Cancellation) -> Token:
        api_key = self._api_key
        request, redacted = self._requests(client, cancellation, api_key)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._failure(exc, redacted, cancellation) from exc
        with self._reading() as body:
            try:
                async for chunk in response.aiter_raw(READ_STEP):
                    if body.add(chunk):
                        break
            finally:
                await response.aclose()
        return self._answer(response, redacted, body.data, api_key)

    def _async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._settings.client_options(self.endpoint))

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Body]:
        """The body as it is read; a read that fails is a :class:`TokenRequestError`."""
        try:
            yield Body()
        except httpx.HTTPError as exc:
            raise broke_off(self.endpoint, exc) from exc

    def _requests(
        self, client: httpx.Client | httpx.AsyncClient, cancellation: Cancellation, api_key: str
    ) -> tuple[httpx.Request, httpx.Request]:
        """The token request (an attempt, counted), and the copy without the key that errors
        and responses carry."""
        cancellation.attempts += 1
        method, url, headers, body = token_request(self.endpoint, api_key)
        request = client.build_request(method, url, headers=headers, content=body)
        return request, httpx.Request(method, url, headers=request.headers, content=REDACTED_BODY)

    def _answer(
        self, response: httpx.Response, redacted: httpx.Request, body: bytes, api_key: str
    ) -> Token:
        response.request = redacted
        status, reason, headers = response.status_code, response.reason_phrase, response.headers
        encoding = headers.get("Content-Encoding", "")  # read raw: httpx inflates a read whole
        return read_answer(
            self.endpoint, api_key, status, reason, headers, body, encoding, response
        )

    def _failure(
        self, error: httpx.HTTPError, redacted: httpx.Request, cancellation: Cancellation
    ) -> TokenRequestError:
        if isinstance(error, httpx.RequestError):
            error.request = redacted
        timed_out = isinstance(error, httpx.TimeoutException)
        return failure(
            self.endpoint,
            error,
            stopped=cancellation.cancelled,
            timed_out=timed_out,
            tls_fixes=TLS_FIXES,
        )
