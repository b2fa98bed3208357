"""requests-opsnow: drop-in ``requests`` authentication for the OpsNow API.

Usage::

    requests.get(url, auth=OpsNowAuth(key))  # or: session.auth = OpsNowAuth()
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._config import (
    GLOBAL_BASE_URL,
    KOREA_BASE_URL,
    LEGACY_BASE_URL,
    REGIONS,
    base_url_for_region,
)
from ._telemetry import TokenEvent, subscribe
from ._token import Token, TokenInfo
from ._version import __version__
from .auth import OpsNowAuth
from .cache import MemoryTokenCache, TokenCache
from .errors import (
    ApiKeyUnavailableError,
    InvalidApiKeyError,
    OpsNowAPIError,
    OpsNowAuthError,
    ReplaySkippedWarning,
    TokenRequestError,
    TokenResponseError,
)

if TYPE_CHECKING:
    from .filecache import FileTokenCache
    from .rediscache import RedisTokenCache
    from .session import OpsNowSession, raise_for_opsnow_error

logging.getLogger("requests_opsnow").addHandler(logging.NullHandler())

_LAZY = {
    "FileTokenCache": "filecache",
    "OpsNowSession": "session",
    "raise_for_opsnow_error": "session",
    "RedisTokenCache": "rediscache",
}
"""Imported on first use: the session pulls in requests-toolbelt, which most users never need."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "GLOBAL_BASE_URL",
    "KOREA_BASE_URL",
    "LEGACY_BASE_URL",
    "REGIONS",
    "ApiKeyUnavailableError",
    "FileTokenCache",
    "InvalidApiKeyError",
    "MemoryTokenCache",
    "OpsNowAPIError",
    "OpsNowAuth",
    "OpsNowAuthError",
    "OpsNowSession",
    "RedisTokenCache",
    "ReplaySkippedWarning",
    "Token",
    "TokenCache",
    "TokenEvent",
    "TokenInfo",
    "TokenRequestError",
    "TokenResponseError",
    "__version__",
    "base_url_for_region",
    "raise_for_opsnow_error",
    "subscribe",
]
