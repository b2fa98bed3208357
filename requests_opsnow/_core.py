"""The client-independent half of an OpsNow auth: its options, host policy and lifecycle.

``requests_opsnow.OpsNowAuth`` (requests) and ``requests_opsnow.httpx.OpsNowAuth``
(httpx) both derive from :class:`AuthCore`: the same options (``AuthOptions``),
resolved and checked the same way, and the same token lifecycle for the same
key, so that one process holds one token whichever client asks
(``docs/design.md``, "One lifecycle per key"). Each adds its transport.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, TypeVar

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
from ._lifecycle import Flow, Io, TokenLifecycle, lifecycle_for
from ._protocol import TokenEndpoint
from ._runtime import RuntimeState
from ._token import TokenInfo
from ._transport_requests import RequestsTransport, SendSettings
from .cache import TokenCache
from .errors import InvalidApiKeyError

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._config import AuthOptions
    from ._keysources import KeySource

T = TypeVar("T")

log = logging.getLogger("requests_opsnow")


class KeyedTransport(_driver_sync.Transport, Protocol):
    """A transport whose key can change: the next fetch sends the new one."""

    def use_key(self, api_key: str) -> None: ...


class AuthCore(RuntimeState):
    """Options, host policy, the process's token lifecycle for one key, and a transport
    (by default: requests, with requests' own TLS and proxy defaults)."""

    __signature__ = OptionsSignature()
    _runtime_fields: ClassVar[tuple[str, ...]] = ("_store", "_lifecycle", "_transport")
    _kept_across_fork: ClassVar[tuple[str, ...]] = _runtime_fields  # the lifecycle resets itself

    def __init__(self, api_key: str | None = None, **options: Unpack[AuthOptions]) -> None:
        check_options(type(self).__name__, dict(options))
        sources = Sources(options.get("profile"))
        self._api_key, self._key_source = sources.api_key(api_key)
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
        self._transport: KeyedTransport = self._new_transport()

    def _new_transport(self) -> KeyedTransport:
        return RequestsTransport(self._endpoint, self._api_key, None, SendSettings())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_url={self._endpoint.safe_url!r})"

    @property
    def token_cache(self) -> TokenCache | None:
        """The store that shares this auth's token beyond the process; None for memory."""
        return self._store

    def cached_token(self) -> TokenInfo | None:
        """The token the store holds for this key, without fetching one (None for memory):
        a :class:`TokenInfo` whose ``source`` is the store and whose ``refresh_at`` is the
        latest moment it falls due."""
        return self._lifecycle.stored()

    # -- a new key without a restart (docs/design.md) -----------------------------------

    def _keyed(self, flow: Callable[..., Flow[T]], *args: Any) -> Flow[T]:
        """``flow(lifecycle, *args)`` on this auth's lifecycle; when the key came from a
        source that can change, on the lifecycle of the key it holds now, and after a
        rejection once more on a new key's, if the source holds another."""
        if self._key_source is None:  # an argument or OPSNOW_API_KEY: it cannot change
            return flow(self._lifecycle, *args)
        return self._rekeyed(self._key_source, flow, *args)

    def _rekeyed(self, source: KeySource, flow: Callable[..., Flow[T]], *args: Any) -> Flow[T]:
        if source.changed():  # a key file's stat: a rotated secret is used before its time
            yield Io(lambda: self._take_key(source, None))
        lifecycle = self._lifecycle
        try:
            return (yield from flow(lifecycle, *args))
        except InvalidApiKeyError:
            if not (yield Io(lambda: self._take_key(source, lifecycle))):
                raise
        return (yield from flow(self._lifecycle, *args))

    def _take_key(self, source: KeySource, rejected: TokenLifecycle | None) -> bool:
        """Read the key ``source`` again and switch to the key it holds if that is another
        (``rejected``: the lifecycle whose key was rejected). Whether the auth now has
        another key than ``rejected``'s. Blocking: a command, a keyring, a file."""
        if rejected is not None and self._lifecycle is not rejected:
            return True  # another thread has switched already
        key = source.key_now()  # a profile's source is read by one thread at once
        if key is None:
            return False
        with _switching.lock:
            if rejected is not None and self._lifecycle is not rejected:
                return True
            if key == self._api_key:
                return False
            self._api_key = key
            # The transport first: a fetch for the new key's lifecycle never sends the old
            # (one for the old lifecycle may send the new: its token is as good).
            self._transport.use_key(key)
            self._lifecycle = lifecycle_for(self.token_url, key, self.refresh_margin, self._store)
        log.warning(
            "%s: using the new API key that %r holds",
            "the API key was rejected" if rejected is not None else "the key file changed",
            source,
        )
        return True

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


class _Switching(RuntimeState):
    """The lock under which an auth switches to a new key: rare (a rejection, a key file's
    change), so one for the process; an auth itself keeps no lock (one built per call
    costs nothing at a fork)."""

    _runtime_fields = ("lock",)

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self.lock = threading.Lock()


_switching = _Switching()
