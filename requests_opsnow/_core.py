"""The client-independent half of an OpsNow auth: its options, host policy and lifecycle.

``requests_opsnow.OpsNowAuth`` (requests) and ``requests_opsnow.httpx.OpsNowAuth``
(httpx) both derive from :class:`AuthCore`: the same options (``AuthOptions``),
resolved and checked the same way, and the same token lifecycle for the same
key, so that one process holds one token whichever client asks
(``docs/design.md``, "One lifecycle per key"). Each adds its transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from . import _driver_sync
from ._config import (
    TOKEN_PATH,
    OptionsSignature,
    Sources,
    check_max_retries,
    check_options,
    check_refresh_margin,
    check_timeout,
    host_list,
    store_at,
)
from ._hosts import Decision, check_cleartext, check_root, check_secure_url, host_policy
from ._lifecycle import TokenLifecycle, lifecycle_for
from ._protocol import TokenEndpoint
from ._runtime import RuntimeState
from ._token import Token
from ._transport_requests import RequestsTransport, SendSettings
from .cache import TokenCache

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._config import AuthOptions


class AuthCore(RuntimeState):
    """Options, host policy, the process's token lifecycle for one key, and a transport
    (by default: requests, with requests' own TLS and proxy defaults)."""

    __signature__ = OptionsSignature()
    _runtime_fields: ClassVar[tuple[str, ...]] = ("_store", "_lifecycle", "_transport")
    _kept_across_fork: ClassVar[tuple[str, ...]] = _runtime_fields  # the lifecycle resets itself

    def __init__(self, api_key: str | None = None, **options: Unpack[AuthOptions]) -> None:
        check_options(type(self).__name__, dict(options))
        sources = Sources(options.get("profile"))
        self._api_key = sources.api_key(api_key)
        self.base_url = sources.base_url(options.get("base_url"))
        token_url = options.get("token_url")
        self.token_url = token_url if token_url is not None else self.base_url + TOKEN_PATH
        check_secure_url(self.base_url, "base_url")
        check_root(self.base_url)
        check_secure_url(self.token_url, "token_url")
        self.refresh_margin = check_refresh_margin(options.get("refresh_margin"))
        timeout, retries = (
            check_timeout(options.get("timeout")),
            check_max_retries(options.get("max_retries")),
        )
        self._endpoint = TokenEndpoint(self.token_url, timeout, retries)
        self._hosts = host_policy(
            (self.base_url, self.token_url), host_list(options.get("allowed_hosts"))
        )
        self._cache = options.get("cache")
        # Where OPSNOW_TOKEN_CACHE keeps tokens, resolved (and checked) now; the store
        # object for that place is the process's own, found again after a copy.
        self._store_place = sources.store_place() if self._cache is None else None
        self._start_runtime()  # a subclass sets its own configuration before calling this

    def _new_runtime_state(self) -> None:
        place = self._store_place
        self._store: TokenCache | None = self._cache if place is None else store_at(place)
        self._lifecycle: TokenLifecycle = lifecycle_for(
            self.token_url, self._api_key, self.refresh_margin, self._store
        )
        self._transport: _driver_sync.Transport = self._new_transport()

    def _new_transport(self) -> _driver_sync.Transport:
        return RequestsTransport(self._endpoint, self._api_key, None, SendSettings())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_url={self._endpoint.safe_url!r})"

    @property
    def token_cache(self) -> TokenCache | None:
        """The store that shares this auth's token beyond the process; None for memory."""
        return self._store

    def cached_token(self) -> Token | None:
        """The token the store holds for this key, without fetching one (None for memory)."""
        return self._lifecycle.stored()

    def invalidate(self) -> None:
        """Forget the token, here and in a shared cache: the next request fetches a new one.

        Also when this process has not used the token yet (``opsnow token --renew``
        after a ``curl`` got a 401): it is read from the cache to be forgotten.
        Every auth in this process with the same key forgets it too.
        """
        _driver_sync.run(self._lifecycle.invalidate(), self._transport)

    def trusts(self, url: str) -> bool:
        """Whether a request to ``url`` would carry the token (host and scheme rules)."""
        return self._hosts.decide(url) in (Decision.ATTACH, Decision.ATTACH_CLEARTEXT)

    def _gets_token(self, url: str) -> bool:
        """Whether a request to ``url`` gets the token; raise if it must not go at all."""
        decision = self._hosts.decide(url)
        if decision is Decision.SKIP:
            return False
        if decision is not Decision.ATTACH:
            check_cleartext(url, decision)
        return True
