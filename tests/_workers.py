"""Entry points for processes started by the tests (kept light to import)."""

from __future__ import annotations

from typing import Any


def fetch_with_file_cache(barrier: Any, base_url: str, api_key: str, directory: str) -> str:
    """Wait for the others, then get a token through a FileTokenCache."""
    from requests_opsnow import OpsNowAuth
    from requests_opsnow.filecache import FileTokenCache

    auth = OpsNowAuth(api_key, base_url=base_url, cache=FileTokenCache(directory))
    barrier.wait(timeout=30)
    try:
        return auth.get_token()
    finally:
        auth.close()
