"""Resolving and validating OpsNowAuth's options (arguments, then environment)."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, TypedDict, Union

from ._hosts import safe_place
from ._runtime import RuntimeState

if TYPE_CHECKING:
    from ._keysources import KeySource
    from ._profiles import Profile
    from .cache import TokenCache

PROFILE_ENV = "OPSNOW_PROFILE"
"""Names the profile to use when ``profile=`` is not given."""

GLOBAL_BASE_URL = "https://api.opsnow360.io"
KOREA_BASE_URL = "https://api.kr.opsnow360.io"
LEGACY_BASE_URL = "https://api.opsnow.io"
REGIONS = {"global": GLOBAL_BASE_URL, "kr": KOREA_BASE_URL, "legacy": LEGACY_BASE_URL}
"""Region names accepted by :func:`base_url_for_region` and ``opsnow --region``."""

DEFAULT_REFRESH_MARGIN = 300.0
"""Seconds before expiry at which a token is due for (early, background) refresh."""

TOKEN_TIMEOUT = 10.0
"""Seconds a token request may take to connect, and to answer (``OpsNowAuth(timeout=)``,
``opsnow --timeout``)."""

API_TIMEOUT = (10.0, 60.0)
"""Seconds an API request may take to connect, and then to answer: ``OpsNowSession.timeout``
(settable; requests' own default is to wait forever)."""

DEFAULT_MAX_RETRIES = 3
"""Retries of a token request that failed transiently (connection, timeout, 429, 5xx)."""

TOKEN_PATH = "/platform/v2/identity/api-keys/token"  # noqa: S105 (a path, not a secret)
API_KEY_ENV = "OPSNOW_API_KEY"
KEY_FILE_ENV = "OPSNOW_API_KEY_FILE"
"""Names a file whose first line is the key (when ``OPSNOW_API_KEY`` is not set)."""
BASE_URL_ENV = "OPSNOW_BASE_URL"
TOKEN_CACHE_ENV = "OPSNOW_TOKEN_CACHE"  # noqa: S105 (a variable name, not a secret)
"""Selects the token store when ``cache=`` is not given: ``memory`` (the default),
``file``, ``file:/some/folder``, or a ``redis://`` / ``rediss://`` URL."""


class AuthOptions(TypedDict, total=False):
    """The options every OpsNow auth takes, declared once: the requests ``OpsNowAuth``,
    the httpx one and ``OpsNowSession`` each add only their own TLS and proxy options.
    ``None`` always means the default; an explicit 0 means 0."""

    base_url: Optional[str]
    token_url: Optional[str]
    refresh_margin: Optional[float]
    timeout: Union[float, tuple[float, float], None]
    max_retries: Optional[int]
    allowed_hosts: Optional[Iterable[str]]
    cache: Optional[TokenCache]
    profile: Optional[str]


class OptionsSignature:
    """A class's ``__signature__`` with ``**options`` spelled out (each :class:`AuthOptions`
    keyword, ``None`` by default, right after ``api_key``), for ``help()`` and
    ``inspect``; made on first use, so that importing the package imports no ``inspect``."""

    def __get__(self, instance: object, owner: type) -> Any:
        if instance is not None:  # an auth's own signature is its __call__'s
            raise AttributeError("__signature__")
        import inspect

        own = list(inspect.signature(owner.__init__).parameters.values())[1:]  # type: ignore[misc]
        options = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=getattr(kind, "__forward_arg__", kind),
            )
            for name, kind in AuthOptions.__annotations__.items()
        ]
        rest = [parameter for parameter in own[1:] if parameter.kind is not parameter.VAR_KEYWORD]
        return inspect.Signature([own[0], *options, *rest])


def check_options(owner: str, options: dict[str, object]) -> None:
    """A TypeError for a keyword argument that is not an option, as Python gives for others."""
    for name in options:
        if name not in AuthOptions.__annotations__:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")


def base_url_for_region(region: str) -> str:
    """The API base URL of a region name: ``global``, ``kr`` (Korea) or ``legacy``."""
    try:
        return REGIONS[region.strip().lower()]
    except KeyError:
        names = ", ".join(sorted(REGIONS))
        raise ValueError(f"unknown OpsNow region {region!r}; choose one of: {names}") from None


class NoApiKeyError(ValueError):
    """No key from the argument, the environment or a profile (the CLI exits 3 for it).
    ``profile``: the profile that was read (None: none was), for the CLI's own advice."""

    def __init__(self, message: str, profile: str | None = None) -> None:
        super().__init__(message, profile)
        self.profile = profile

    def __str__(self) -> str:
        return str(self.args[0])


class Sources:
    """Where each setting comes from, first found wins: the argument, the environment
    (``OPSNOW_API_KEY``, ``OPSNOW_BASE_URL``, ``OPSNOW_TOKEN_CACHE``), the profile named
    by ``profile=`` or ``OPSNOW_PROFILE``, else the ``[default]`` profile (a named
    profile takes nothing from ``[default]``).

    The config file is read only when a setting is still missing, or when a profile is
    named (a name that matches no profile is an error, even if nothing else is needed).
    """

    def __init__(self, profile: str | None = None) -> None:
        if profile is not None and (not isinstance(profile, str) or not profile.strip()):
            raise ValueError(f"profile must be a profile's name, got {profile!r}")
        self._name = profile.strip() if profile is not None else None
        self._loaded: Profile | bool | None = False
        if self._name is not None or os.environ.get(PROFILE_ENV, "").strip():
            self.profile()

    def profile(self) -> Profile | None:
        if self._loaded is False:
            from ._profiles import named_profile

            self._loaded = named_profile(self._name)
        return self._loaded if isinstance(self._loaded, tuple) else None

    def api_key(self, api_key: str | None) -> tuple[str, KeySource | None]:
        """The key, first found: the argument, ``OPSNOW_API_KEY``, ``OPSNOW_API_KEY_FILE``,
        the profile; and where to read it again (None for the first two: they cannot
        change)."""
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV)
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        key = (api_key or "").strip()
        if key:
            return key, None
        path = os.environ.get(KEY_FILE_ENV, "").strip()
        if path:
            from ._keysources import KeyFile  # only then: it brings subprocess along

            key_file = KeyFile(path, f"{KEY_FILE_ENV}={path}")
            return key_file.key(), key_file
        profile = self.profile()
        key = self._profile_key()
        if not key:
            raise NoApiKeyError(self._no_key_message(), profile.name if profile else None)
        from ._profiles import ProfileKey

        assert profile is not None
        return key, ProfileKey(profile)

    def _no_key_message(self) -> str:
        profile = self.profile()
        if profile is None:
            return (
                f"no OpsNow API key: pass api_key=, set {API_KEY_ENV} (or {KEY_FILE_ENV}), or"
                " store one with `opsnow configure`"
            )
        return (
            f"no OpsNow API key: profile {profile.name!r} names no key source; pass"
            f" api_key=, set {API_KEY_ENV}, or store one with"
            f" `opsnow configure --profile {profile.name}`"
        )

    def _profile_key(self) -> str:
        from ._profiles import api_key_of

        profile = self.profile()
        return (api_key_of(profile) or "").strip() if profile is not None else ""

    def base_url(self, base_url: str | None) -> str:
        url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV, "").strip()
        profile = None if url else self.profile()
        if profile is not None:
            url = profile.base_url or (
                base_url_for_region(profile.region) if profile.region else ""
            )
        return (url or GLOBAL_BASE_URL).rstrip("/")

    def store_place(self) -> str | None:
        """Where ``OPSNOW_TOKEN_CACHE`` (else the profile's ``token_cache``) keeps tokens:
        ``file:/folder`` or a Redis URL; None for memory. A value naming no place is a
        ValueError."""
        spec = os.environ.get(TOKEN_CACHE_ENV, "").strip()
        if spec:
            return token_cache_place(spec, TOKEN_CACHE_ENV)
        profile = self.profile()
        if profile is None or not profile.token_cache:
            return None
        return token_cache_place(profile.token_cache, f"profile {profile.name!r}: token_cache")


def resolve_base_url(base_url: str | None) -> str:
    """The base URL from the argument, the environment or the default profile."""
    return Sources().base_url(base_url)


def check_refresh_margin(value: float | None) -> float:
    return non_negative_seconds(
        DEFAULT_REFRESH_MARGIN if value is None else value, "refresh_margin"
    )


def non_negative_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_timeout(timeout: object) -> float | tuple[float, float]:
    if timeout is None:
        return TOKEN_TIMEOUT
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = (_positive(part, "timeout") for part in timeout)
        return (connect, read)
    return _positive(timeout, "timeout")


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number of seconds or a (connect, read) pair")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_max_retries(max_retries: object) -> int:
    if max_retries is None:
        return DEFAULT_MAX_RETRIES
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise TypeError(f"max_retries must be an int, not {type(max_retries).__name__}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    return max_retries


def host_list(allowed_hosts: Iterable[str] | str | None) -> tuple[str, ...]:
    if allowed_hosts is None:
        return ()
    if isinstance(allowed_hosts, str):
        return (allowed_hosts,)
    return tuple(allowed_hosts)


class _StoresByPlace(RuntimeState):
    """One store object per place, so that auths built per call share one token lifecycle."""

    _runtime_fields = ("_lock", "_stores")
    _kept_across_fork = ("_stores",)

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()  # rebuilt in a forked child, like every runtime field
        self._stores: dict[str, TokenCache] = {}

    def at(self, place: str) -> TokenCache:
        with self._lock:
            store = self._stores.get(place)
            if store is None:
                store = self._stores[place] = _store_at(place)
            return store


_stores_by_place = _StoresByPlace()


def store_at(place: str) -> TokenCache:
    """The process's store for a place :meth:`Sources.store_place` named."""
    return _stores_by_place.at(place)


def token_cache_place(spec: str, what: str) -> str | None:
    """Where a value of ``OPSNOW_TOKEN_CACHE`` (or a profile's ``token_cache``, named in
    messages as ``what``) keeps tokens: None for memory, ``file:/folder`` (the default
    folder resolved now) or a Redis URL; else ValueError."""
    spec = spec.strip()
    if spec in ("", "memory"):
        return None
    if spec == "file":
        from .filecache import default_cache_dir

        folder = default_cache_dir()  # None (no home): FileTokenCache warns, keeps to memory
        return f"file:{folder or ''}"
    if spec.startswith("file:"):
        if not os.path.isabs(spec[len("file:") :]):
            raise ValueError(f"{what}=file:FOLDER needs an absolute folder: {spec!r}")
        return spec
    if spec.startswith(("redis://", "rediss://")):
        return spec
    raise ValueError(
        f"{what} must be memory, file, file:/folder or a redis:// or rediss://"
        f" URL, got {safe_place(spec)!r}"
    )


def _store_at(place: str) -> TokenCache:
    if place.startswith("file:"):
        from .filecache import FileTokenCache

        return FileTokenCache(place[len("file:") :] or None)
    return _redis_store(place)


def _redis_store(url: str) -> TokenCache:
    try:
        import redis

        from .rediscache import RedisTokenCache
    except ImportError:
        raise ImportError(
            f"{TOKEN_CACHE_ENV}={safe_place(url)} needs redis-py:"
            " pip install 'requests-opsnow[redis]'"
        ) from None
    try:
        client = redis.Redis.from_url(url)
    except ValueError:
        raise ValueError(
            f"{TOKEN_CACHE_ENV} is not a usable Redis URL: {safe_place(url)!r}"
        ) from None
    return RedisTokenCache(client)
