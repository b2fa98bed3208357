"""Resolving and validating OpsNowAuth's options (arguments, then environment)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

GLOBAL_BASE_URL = "https://api.opsnow360.io"
KOREA_BASE_URL = "https://api.kr.opsnow360.io"
LEGACY_BASE_URL = "https://api.opsnow.io"
REGIONS = {"global": GLOBAL_BASE_URL, "kr": KOREA_BASE_URL, "legacy": LEGACY_BASE_URL}
"""Region names accepted by :func:`base_url_for_region` and ``opsnow --region``."""

DEFAULT_REFRESH_MARGIN = 300.0
"""Seconds before expiry at which a token is due for (early, background) refresh."""

DEFAULT_TIMEOUT = 10.0
"""Seconds a token request may take to connect, and to answer."""

DEFAULT_MAX_RETRIES = 3
"""Retries of a token request that failed transiently (connection, timeout, 429, 5xx)."""

TOKEN_PATH = "/platform/v2/identity/api-keys/token"  # noqa: S105 (a path, not a secret)
API_KEY_ENV = "OPSNOW_API_KEY"
BASE_URL_ENV = "OPSNOW_BASE_URL"


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
        return DEFAULT_TIMEOUT
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
