"""OpsNowAuth: the requests auth plugin. It wires the token lifecycle into requests.

The token's life (caching, early refresh, single flight, rejection) belongs to
:mod:`requests_opsnow._lifecycle`, shared by every auth with the same key, run
here by the thread driver; the token request to the requests transport; the
resend after a 401 to :mod:`requests_opsnow._replay`; where the token may go
to :mod:`requests_opsnow._hosts`. The hot path (``__call__``) is a host lookup,
an identity check, a clock read, a header and a hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import requests
from requests.auth import AuthBase

from . import _clock
from ._core import AuthCore
from ._driver_sync import run
from ._hosts import Decision, check_cleartext, route
from ._lifecycle import HeldToken, TokenLifecycle
from ._replay import (
    inert_hook,
    is_replay,
    passes_through,
    prepare_replay,
    resend,
    warn_replay_skipped,
)
from ._token import TokenInfo
from ._transport_requests import RequestsTransport, SendSettings

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._config import AuthOptions


class OpsNowAuth(AuthCore, AuthBase):
    """Authenticate requests to the OpsNow API with a cached, self-refreshing token.

    ``requests.get(url, auth=OpsNowAuth(key))`` or ``session.auth = OpsNowAuth()``.
    Every auth with the same token URL, key, refresh margin and token store
    shares one token in a process, so building one per call is cheap. Every option
    is in the user guide ("Getting started", Configuration); ``None`` always means
    "the default".
    """

    _runtime_fields = (*AuthCore._runtime_fields, "_attached")
    _kept_across_fork = _runtime_fields  # the lifecycle resets itself in a child
    _transport: RequestsTransport

    def __init__(
        self,
        api_key: str | None = None,
        *,
        session: requests.Session | None = None,
        verify: bool | str | None = None,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
        **options: Unpack[AuthOptions],
    ) -> None:
        self._session = session
        self._send_settings = SendSettings(verify=verify, cert=cert, proxies=proxies)
        super().__init__(api_key, **options)

    def _new_runtime_state(self) -> None:
        super()._new_runtime_state()
        self._attached = _NOTHING_ATTACHED

    def _new_transport(self) -> RequestsTransport:
        return RequestsTransport(self._endpoint, self._api_key, self._session, self._send_settings)

    # -- the hot path -------------------------------------------------------------

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        decision = self._hosts.decide(r.url or "")
        if decision is not Decision.ATTACH:
            if decision is Decision.SKIP:
                return r
            check_cleartext(r.url or "", decision, r)
        attached = self._attached
        if attached.held is not self._lifecycle.held or _clock.now() >= attached.refresh_at:
            attached = self._attach(
                run(self._keyed(TokenLifecycle.obtain, self._endpoint.bound), self._transport)
            )
        r.headers["Authorization"] = attached.header
        r.hooks["response"].append(attached.hook)
        return r

    def _attach(self, held: HeldToken) -> _Attached:
        attached = self._attached
        if attached.held is not held:
            attached = self._attached = _Attached(held, _ReplayHook(self, held))
        return attached

    # -- public helpers -----------------------------------------------------------

    def get_token(self) -> str:
        """A valid access token, fetched if needed."""
        return self.get_token_info().value

    def get_token_info(self, *, fresh: bool = False) -> TokenInfo:
        """Like :meth:`get_token`, with the expiry, where the token came from and when it falls
        due: a :class:`TokenInfo` (a :class:`Token`: value, expires_at, issued_at; and source,
        refresh_at).

        ``fresh=True`` waits for the refresh of a token that is due, instead of
        returning it while a background thread refreshes it: for short-lived
        processes (the ``opsnow`` command) that would exit before that thread is done.
        """
        flow = TokenLifecycle.fresh if fresh else TokenLifecycle.obtain
        held = run(self._keyed(flow, self._endpoint.bound), self._transport)
        return TokenInfo(held.token, held.source, held.refresh_at)

    def follow_settings_of(self, session: requests.Session) -> None:
        """Send token requests with ``session``'s verify, cert, proxies and trust_env, read
        at each fetch (an ``OpsNowSession`` does this with the auth it builds); options
        given to this auth still win. The first live session to ask keeps it."""
        self._transport.follow(session)

    def close(self) -> None:
        """Nothing to close: a token request's connection lives only as long as the fetch.

        Kept so that code written for earlier versions (and ``with`` blocks) keep working.
        """

    # -- the 401 handler ----------------------------------------------------------

    def _on_401(
        self, sent: HeldToken, response: requests.Response, send_options: dict[str, Any]
    ) -> requests.Response:
        request = response.request
        # Only a response to a request that really carried this token (after a cross-origin
        # redirect requests has stripped it, and we never put it back), and only once.
        if request.headers.get("Authorization") != sent.header or is_replay(request):
            return response
        ready = prepare_replay(response)
        if isinstance(ready, str):
            run(self._lifecycle.replay_skipped(sent.token), self._transport)
            warn_replay_skipped(request.method or "", request.url or "", ready)
            return response
        where = route(request.method or "", request.url or "")
        flow = self._keyed(TokenLifecycle.after_401, self._endpoint.bound, sent.token, where)
        replacement = run(flow, self._transport)
        if replacement is None:
            return response
        replayed = resend(response, *ready, replacement.header, send_options)
        if replayed.status_code == 401:
            self._lifecycle.refused(where, replacement.token)
        return replayed


class _ReplayHook:
    """The response hook of requests that carried ``held``: made once per token and auth.

    A response (with its request and hooks) must pickle, for process pools and
    response caches; a pickled hook holds neither the auth nor its key, and
    does nothing once unpickled.
    """

    __slots__ = ("auth", "held")

    def __init__(self, auth: OpsNowAuth, held: HeldToken) -> None:
        self.auth = auth
        self.held = held

    def __call__(self, response: requests.Response, **send_options: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        return self.auth._on_401(self.held, response, send_options)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., Any]], tuple[()]]:
        return (inert_hook, ())


class _Attached:
    """What one auth sends with a held token: its header and its 401 hook."""

    __slots__ = ("header", "held", "hook", "refresh_at")

    def __init__(self, held: HeldToken | None, hook: Callable[..., Any]) -> None:
        self.held = held
        self.hook = hook
        self.header = held.header if held is not None else ""
        self.refresh_at = held.refresh_at if held is not None else float("-inf")


_NOTHING_ATTACHED = _Attached(None, passes_through)
"""Before the first request: never current, so the first call asks the lifecycle."""
