"""The client-independent half of an OpsNow auth: its options, host policy and lifecycle.

``requests_opsnow.OpsNowAuth`` (requests) and ``requests_opsnow.httpx.OpsNowAuth``
(httpx) both derive from :class:`AuthCore`: the same options, resolved and
checked the same way, and the same token lifecycle for the same key, so that
one process holds one token whichever client asks (``docs/design.md``,
"One lifecycle per key").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import requests

from ._config import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REFRESH_MARGIN,
    TOKEN_PATH,
    TOKEN_TIMEOUT,
    Sources,
    check_max_retries,
    check_refresh_margin,
    check_timeout,
    host_list,
    store_at,
)
from ._exchange import TokenEndpoint
from ._hosts import (
    Decision,
    check_secure_url,
    environment_proxy,
    host_policy,
    safe_place,
    safe_url,
)
from ._lifecycle import TokenLifecycle, lifecycle_for
from ._runtime import RuntimeState
from .cache import TokenCache
from .errors import OpsNowAuthError


class AuthCore(RuntimeState):
    """Options, host policy and the process's token lifecycle for one key.

    ``None`` always means "the default"; an explicit 0 means 0.
    """

    _runtime_fields: ClassVar[tuple[str, ...]] = ("_store", "_lifecycle")
    _kept_across_fork: ClassVar[tuple[str, ...]] = _runtime_fields  # the lifecycle resets itself

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
    ) -> None:
        sources = Sources(profile)
        self._api_key = sources.api_key(api_key)
        self.base_url = sources.base_url(base_url)
        self.token_url = token_url if token_url is not None else self.base_url + TOKEN_PATH
        check_secure_url(self.base_url, "base_url")
        check_secure_url(self.token_url, "token_url")
        self.refresh_margin = check_refresh_margin(refresh_margin)
        self._endpoint = TokenEndpoint(
            self.token_url, check_timeout(timeout), check_max_retries(max_retries)
        )
        self._hosts = host_policy((self.base_url, self.token_url), host_list(allowed_hosts))
        self._cache = cache
        # Where OPSNOW_TOKEN_CACHE keeps tokens, resolved (and checked) now; the store
        # object for that place is the process's own, found again after a copy.
        self._store_place = sources.store_place() if cache is None else None
        self._start_runtime()  # a subclass sets its own configuration before calling this

    def _new_runtime_state(self) -> None:
        place = self._store_place
        self._store: TokenCache | None = self._cache if place is None else store_at(place)
        self._lifecycle: TokenLifecycle = lifecycle_for(
            self.token_url, self._api_key, self.refresh_margin, self._store
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_url={self._endpoint.safe_url!r})"

    def invalidate(self) -> None:
        """Forget the token, here and in a shared cache: the next request fetches a new one.

        Also when this process has not used the token yet (``opsnow token --renew``
        after a ``curl`` got a 401): it is read from the cache to be forgotten.
        Every auth in this process with the same key forgets it too.
        """
        self._lifecycle.invalidate()

    def trusts(self, url: str) -> bool:
        """Whether a request to ``url`` would carry the token (host and scheme rules)."""
        return self._hosts.decide(url) in (Decision.ATTACH, Decision.ATTACH_CLEARTEXT)

    def _gets_token(self, url: str) -> bool:
        """Whether a request to ``url`` gets the token; raise if it must not go at all."""
        decision = self._hosts.decide(url)
        if decision is Decision.ATTACH:
            return True
        if decision is Decision.SKIP:
            return False
        check_cleartext(url, decision)
        return True


def check_cleartext(
    url: str, decision: Decision, request: requests.PreparedRequest | None = None
) -> None:
    """Refuse to put the token on plain http, except straight to loopback."""
    if decision is Decision.REFUSE:
        raise OpsNowAuthError(
            "refusing to send the OpsNow token over plain http to a non-loopback host; use https",
            request=request,
        )
    proxy = environment_proxy(url)
    if proxy is not None:
        raise OpsNowAuthError(
            f"refusing to send the OpsNow token over plain http to {safe_url(url)} through the"
            f" proxy {safe_place(proxy)} (from the environment); add the host to NO_PROXY",
            request=request,
        )
