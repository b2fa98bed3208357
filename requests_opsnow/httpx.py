"""OpsNow auth for httpx, sync and async: ``httpx.Client(auth=OpsNowAuth())``.

The same token lifecycle as the requests plugin (``docs/design.md``, "Async"):
a requests ``OpsNowAuth``, a sync httpx client and an async one with the same
key share one token, one token request at a time and one early refresh. The
auth flow is written once (:meth:`OpsNowAuth._flow`); httpx's sync and async
flows only drive it, the thread driver or the coroutine driver doing the
lifecycle's effects. In async code nothing blocks the event loop.

Needs the ``httpx`` extra: ``pip install 'requests-opsnow[httpx]'``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "requests_opsnow.httpx needs httpx: pip install 'requests-opsnow[httpx]'"
    ) from exc

from . import _clock, _driver_async, _driver_sync
from ._core import AuthCore
from ._hosts import route
from ._lifecycle import Done, HeldToken, TokenLifecycle
from ._replay import warn_replay_skipped
from ._transport_httpx import ClientSettings, HttpxTransport

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._config import AuthOptions

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
    _transport: HttpxTransport

    def __init__(
        self,
        api_key: str | None = None,
        *,
        verify: bool | str | ssl.SSLContext | None = None,
        cert: str | tuple[str, str] | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        **options: Unpack[AuthOptions],
    ) -> None:
        self._settings = ClientSettings(verify=verify, cert=cert, proxy=proxy, trust_env=trust_env)
        super().__init__(api_key, **options)

    def _new_transport(self) -> HttpxTransport:
        return HttpxTransport(self._endpoint, self._api_key, self._settings)

    # -- the auth flow, once, and httpx's two drivers of it -------------------------------

    def _flow(self, request: httpx.Request) -> Generator[Any, Any, None]:
        """Yields httpx requests (sent back their responses) and the lifecycle's effects."""
        if not self._gets_token(str(request.url)):
            yield request
            return
        bound = self._endpoint.bound
        held = self._lifecycle.held
        if held is None or _clock.now() >= held.refresh_at:
            held = yield from self._keyed(TokenLifecycle.obtain, bound)
        request.headers["Authorization"] = held.header
        response = yield request
        if not _rejected(response, held):
            return
        if not _resendable(request):
            yield from self._lifecycle.replay_skipped(held.token)
            warn_replay_skipped(request.method, str(request.url), _STREAMING)
            return
        where = route(request.method, str(request.url))
        replacement = yield from self._keyed(TokenLifecycle.after_401, bound, held.token, where)
        if replacement is not None:
            response = yield _copy_with(request, replacement.header)
            if response.status_code == 401:
                self._lifecycle.refused(where, replacement.token)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        flow, drive = self._flow(request), _driver_sync.drive
        with contextlib.closing(flow):
            item = drive(flow, self._transport)
            while not isinstance(item, Done):
                item = drive(flow, self._transport, (yield item))

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow, drive = self._flow(request), _driver_async.drive
        with contextlib.closing(flow):
            item = await drive(flow, self._transport)
            while not isinstance(item, Done):
                item = await drive(flow, self._transport, (yield item))

    # -- public helpers -----------------------------------------------------------------

    def get_token(self) -> str:
        """A valid access token, fetched if needed (blocking)."""
        flow = self._keyed(TokenLifecycle.obtain, self._endpoint.bound)
        return _driver_sync.run(flow, self._transport).token.value

    async def aget_token(self) -> str:
        """A valid access token, fetched if needed, without blocking the event loop."""
        flow = self._keyed(TokenLifecycle.obtain, self._endpoint.bound)
        return (await _driver_async.run(flow, self._transport)).token.value

    async def ainvalidate(self) -> None:
        """:meth:`invalidate` without blocking the event loop (a shared store is asked in a
        worker thread)."""
        await _driver_async.run(self._lifecycle.invalidate(), self._transport)


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
