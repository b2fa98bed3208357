"""Resolving and validating OpsNowAuth's options (arguments, then environment)."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._runtime import RuntimeState

if TYPE_CHECKING:
    from .cache import TokenCache

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
BASE_URL_ENV = "OPSNOW_BASE_URL"
TOKEN_CACHE_ENV = "OPSNOW_TOKEN_CACHE"  # noqa: S105 (a variable name, not a secret)
"""Selects the token store when ``cache=`` is not given: ``memory`` (the default),
``file``, ``file:/some/folder``, or a ``redis://`` / ``rediss://`` URL."""


def base_url_for_region(region: str) -> str:
    """The API base URL of a region name: ``global``, ``kr`` (Korea) or ``legacy``."""
    try:
        return REGIONS[region.strip().lower()]
    except KeyError:
        names = ", ".join(sorted(REGIONS))
        raise ValueError(f"unknown OpsNow region {region!r}; choose one of: {names}") from None


def resolve_api_key(api_key: str | None) -> str:
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
    if api_key is not None and not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
    key = (api_key or "").strip()
    if not key:
        raise ValueError(f"no OpsNow API key: pass api_key= or set {API_KEY_ENV}")
    return key


def resolve_base_url(base_url: str | None) -> str:
    url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV, "").strip()
    return (url or GLOBAL_BASE_URL).rstrip("/")


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


def store_place_from_environment() -> str | None:
    """Where ``OPSNOW_TOKEN_CACHE`` keeps tokens (``file:/folder`` or a Redis URL);
    None for memory. A value that names no place is a ValueError."""
    spec = os.environ.get(TOKEN_CACHE_ENV, "").strip()
    if spec in ("", "memory"):
        return None
    return _place_named_by(spec)


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
    """The process's store for a place :func:`store_place_from_environment` named."""
    return _stores_by_place.at(place)


def _place_named_by(spec: str) -> str:
    """``file:/folder`` (the default folder resolved now) or a Redis URL; else ValueError."""
    from ._hosts import safe_url

    if spec == "file":
        from .filecache import default_cache_dir

        folder = default_cache_dir()  # None (no home): FileTokenCache warns, keeps to memory
        return f"file:{folder or ''}"
    if spec.startswith("file:"):
        if not os.path.isabs(spec[len("file:") :]):
            raise ValueError(f"{TOKEN_CACHE_ENV}=file:FOLDER needs an absolute folder: {spec!r}")
        return spec
    if spec.startswith(("redis://", "rediss://")):
        return spec
    raise ValueError(
        f"{TOKEN_CACHE_ENV} must be memory, file, file:/folder or a redis:// or rediss://"
        f" URL, got {safe_url(spec)!r}"
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
        from ._hosts import safe_url

        raise ImportError(
            f"{TOKEN_CACHE_ENV}={safe_url(url)} needs redis-py:"
            " pip install 'requests-opsnow[redis]'"
        ) from None
    try:
        client = redis.Redis.from_url(url)
    except ValueError:
        from ._hosts import safe_url

        raise ValueError(
            f"{TOKEN_CACHE_ENV} is not a usable Redis URL: {safe_url(url)!r}"
        ) from None
    return RedisTokenCache(client)
