"""requests-opsnow: drop-in ``requests`` authentication for the OpsNow API.

>>> requests.get(url, auth=OpsNowAuth(key))       # or: session.auth = OpsNowAuth()
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging

from ._config import (
    GLOBAL_BASE_URL,
    KOREA_BASE_URL,
    LEGACY_BASE_URL,
    REGIONS,
    base_url_for_region,
)
from ._token import Token
from .auth import OpsNowAuth
from .cache import MemoryTokenCache, TokenCache
from .errors import (
    InvalidApiKeyError,
    OpsNowAPIError,
    OpsNowAuthError,
    TokenRequestError,
    TokenResponseError,
)

logging.getLogger("requests_opsnow").addHandler(logging.NullHandler())

__all__ = [
    "GLOBAL_BASE_URL",
    "KOREA_BASE_URL",
    "LEGACY_BASE_URL",
    "REGIONS",
    "InvalidApiKeyError",
    "MemoryTokenCache",
    "OpsNowAPIError",
    "OpsNowAuth",
    "OpsNowAuthError",
    "Token",
    "TokenCache",
    "TokenRequestError",
    "TokenResponseError",
    "__version__",
    "base_url_for_region",
]
