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


def fleet_member(
    redis_url: str, prefix: str, base_url: str, api_key: str, phases: Any, threads: int
) -> list[int]:
    """One host of a fleet: ``threads`` threads burst together, once cold, once after
    the parent revokes every token. ``phases`` is a cross-process barrier."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import redis
    import requests

    from requests_opsnow import OpsNowAuth
    from requests_opsnow.rediscache import RedisTokenCache

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    cache = RedisTokenCache(client, prefix=prefix)
    auth = OpsNowAuth(api_key, base_url=base_url, cache=cache)
    url = base_url + "/platform/v2/companies"

    def burst() -> list[int]:
        together = threading.Barrier(threads)

        def one() -> int:
            with requests.Session() as session:
                together.wait(timeout=30)
                return session.get(url, auth=auth, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda _: one(), range(threads)))

    try:
        phases.wait(timeout=60)  # everyone is up
        statuses = burst()
        phases.wait(timeout=60)  # the parent counts, then revokes
        phases.wait(timeout=60)
        return statuses + burst()
    finally:
        auth.close()
        cache.close()
        client.close()


def hold_redis_lock(redis_url: str, prefix: str, key: str) -> None:
    """Take the fleet lock, say so, and hang until killed."""
    import sys
    import time

    import redis

    from requests_opsnow.rediscache import RedisTokenCache

    cache = RedisTokenCache(redis.Redis.from_url(redis_url), prefix=prefix, lock_lease=1.5)
    with cache.lock(key):
        sys.stdout.write("locked\n")
        sys.stdout.flush()
        time.sleep(600)


def get_with_the_environments_cache(barrier: Any, url: str) -> int:
    """A legacy script: ``requests.get(url, auth=OpsNowAuth())``, configured by the environment
    (OPSNOW_API_KEY, OPSNOW_BASE_URL, OPSNOW_TOKEN_CACHE), started with the others."""
    import requests

    from requests_opsnow import OpsNowAuth

    auth = OpsNowAuth()
    barrier.wait(timeout=30)
    return requests.get(url, auth=auth, timeout=30).status_code


def token_of(auth: Any) -> str:
    """A token from an auth that came here by pickle (multiprocessing "spawn")."""
    token: str = auth.get_token()
    return token


def rejected_member(
    barrier: Any,
    base_url: str,
    calls: int,
    *,
    redis_url: str = "",
    prefix: str = "",
    directory: str = "",
) -> int:
    """One process with a rejected key, sharing a Redis (``redis_url``) or a FileTokenCache
    (``directory``) with the others: ``calls`` token requests asked for; the errors it got."""
    from requests_opsnow import InvalidApiKeyError, OpsNowAuth
    from requests_opsnow.filecache import FileTokenCache

    if redis_url:
        import redis

        from requests_opsnow.rediscache import RedisTokenCache

        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        cache: Any = RedisTokenCache(client, prefix=prefix)
    else:
        cache = FileTokenCache(directory)
    auth = OpsNowAuth("a-key-the-fleet-was-given-wrong", base_url=base_url, cache=cache)
    errors = 0
    try:
        barrier.wait(timeout=30)
        for _ in range(calls):
            try:
                auth.get_token()
            except InvalidApiKeyError:
                errors += 1
        return errors
    finally:
        auth.close()
        if redis_url:
            cache.close()
            client.close()
