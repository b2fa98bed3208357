"""OpsNow auth for httpx, sync and async: ``httpx.Client(auth=OpsNowAuth())``.

The same token lifecycle as the requests plugin (``docs/design.md``, "Async"):
a requests ``OpsNowAuth``, a sync httpx client and an async one with the same
key share one token, one token request at a time and one early refresh. In
async code nothing blocks the event loop: the token request goes through
httpx's async client (in a task nobody awaits), waiters sleep rather than
lock, and a shared store is read and written in a worker thread.

Needs the ``httpx`` extra: ``pip install 'requests-opsnow[httpx]'``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, Generator, Iterable

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "requests_opsnow.httpx needs httpx: pip install 'requests-opsnow[httpx]'"
    ) from exc

from . import _lifecycle_async
from ._config import DEFAULT_MAX_RETRIES, DEFAULT_REFRESH_MARGIN, TOKEN_TIMEOUT
from ._core import AuthCore
from ._exchange_httpx import ClientSettings, fetch_token, fetch_token_async
from ._lifecycle import Cancellation, Fetch, HeldToken
from ._replay import warn_replay_skipped
from ._token import Token
from .cache import TokenCache

__all__ = ["OpsNowAuth"]


class OpsNowAuth(AuthCore, httpx.Auth):
    """Authenticate httpx requests to the OpsNow API with a cached, self-refreshing token.

    ``httpx.Client(auth=OpsNowAuth(key))`` or ``httpx.AsyncClient(auth=OpsNowAuth())``.
    The options are the requests ``OpsNowAuth``'s, with httpx's names for TLS
    and proxies of token requests: ``verify`` (a CA bundle path, an
    ``ssl.SSLContext`` or a bool), ``cert``, ``proxy``, ``trust_env``.
    """

    requires_request_body = False  # a streaming upload stays a stream; it is not resent
    requires_response_body = False
    _runtime_fields = (*AuthCore._runtime_fields, "_fetch")
    _kept_across_fork = _runtime_fields

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
        verify: bool | str | ssl.SSLContext | None = None,
        cert: str | tuple[str, str] | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
    ) -> None:
        self._settings = ClientSettings(verify=verify, cert=cert, proxy=proxy, trust_env=trust_env)
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
        self._fetch = _HttpxFetch(self)

    # -- httpx's auth flows -----------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if not self._gets_token(str(request.url)):
            yield request
            return
        held = self._lifecycle.usable(self._fetch.blocking)
        request.headers["Authorization"] = held.header
        response = yield request
        if not _rejected(response, held):
            return
        if not _resendable(request):
            self._lifecycle.reject(held.token)
            warn_replay_skipped(request.method, str(request.url), _STREAMING)
            return
        replacement = self._lifecycle.replacement_for(held.token, self._fetch.blocking)
        if replacement is not None:
            yield _copy_with(request, replacement.header)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._gets_token(str(request.url)):
            yield request
            return
        held = await _lifecycle_async.usable(self._lifecycle, self._fetch)
        request.headers["Authorization"] = held.header
        response = yield request
        if not _rejected(response, held):
            return
        if not _resendable(request):
            await _lifecycle_async.reject(self._lifecycle, held.token)
            warn_replay_skipped(request.method, str(request.url), _STREAMING)
            return
        replacement = await _lifecycle_async.replacement_for(
            self._lifecycle, held.token, self._fetch
        )
        if replacement is not None:
            yield _copy_with(request, replacement.header)

    # -- public helpers -----------------------------------------------------------------

    def get_token(self) -> str:
        """A valid access token, fetched if needed (blocking)."""
        return self._lifecycle.usable(self._fetch.blocking).token.value

    async def aget_token(self) -> str:
        """A valid access token, fetched if needed, without blocking the event loop."""
        return (await _lifecycle_async.usable(self._lifecycle, self._fetch)).token.value

    async def ainvalidate(self) -> None:
        """:meth:`invalidate` without blocking the event loop (a shared store is asked in a
        worker thread)."""
        await _lifecycle_async.invalidate(self._lifecycle)


_STREAMING = "its body is a stream that cannot be sent again"


def _rejected(response: httpx.Response, held: HeldToken) -> bool:
    """A 401 to a request that really carried ``held``: after a redirect to another
    origin httpx has stripped the token, and it is never put back."""
    return (
        response.status_code == 401 and response.request.headers.get("Authorization") == held.header
    )


def _resendable(request: httpx.Request) -> bool:
    """Whether the body is in memory (bytes, text, form, JSON); a stream is sent once only."""
    try:
        request.content  # noqa: B018 - raises for a stream that was not read
    except httpx.RequestNotRead:
        return False
    return True


def _copy_with(request: httpx.Request, header: str) -> httpx.Request:
    """The request again with a new token: a copy, so the first one keeps what it was sent
    with (respx's call log shows that)."""
    headers = httpx.Headers(request.headers)
    headers["Authorization"] = header
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=request.content,
        extensions=request.extensions,
    )


class _HttpxFetch:
    """The lifecycle's way to get a token over httpx: async, and blocking for threads."""

    __slots__ = ("_auth", "blocking")

    def __init__(self, auth: OpsNowAuth) -> None:
        self._auth = auth
        self.blocking: Fetch = _BlockingFetch(auth)

    @property
    def bound(self) -> float:
        return self._auth._endpoint.bound

    async def __call__(self, cancellation: Cancellation) -> Token:
        auth = self._auth
        return await fetch_token_async(auth._endpoint, auth._api_key, auth._settings, cancellation)


class _BlockingFetch:
    __slots__ = ("_auth",)

    def __init__(self, auth: OpsNowAuth) -> None:
        self._auth = auth

    @property
    def bound(self) -> float:
        return self._auth._endpoint.bound

    def __call__(self, cancellation: Cancellation) -> Token:
        auth = self._auth
        return fetch_token(auth._endpoint, auth._api_key, auth._settings, cancellation)
