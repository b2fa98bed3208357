"""RedisTokenCache: one token for a whole fleet of hosts, through Redis.

Tokens are stored with a TTL equal to their remaining lifetime under
``<prefix>token:<sha256>``; the values hold the token and its expiry, never
the key. A Redis lock with a timeout makes the fetch single-flight across the
fleet (a crashed holder blocks the others for at most ``lock_timeout``).
If Redis is down, slow or evicting, requests still work: tokens are fetched
and kept locally, with one warning per outage, until Redis answers again.

Give the client short timeouts, so a slow Redis cannot slow your requests::

    RedisTokenCache(redis.Redis(host=..., socket_timeout=1, socket_connect_timeout=1))
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

try:
    import redis
    from redis.exceptions import LockError, RedisError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisTokenCache needs redis-py: pip install 'requests-opsnow[redis]'"
    ) from exc

from . import _clock, _forksafe
from ._token import Token, token_from_record, token_to_record
from .cache import MemoryTokenCache

__all__ = ["RedisTokenCache"]

log = logging.getLogger("requests_opsnow")

LOCK_TIMEOUT = 30.0
"""Seconds a fetch may hold the fleet-wide lock; a crashed holder blocks others this long."""

LOCK_POLL_INTERVAL = 0.05
"""Seconds between a waiter's attempts to take the lock."""

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Atomic compare-and-delete: drop the shared token only if it is still the one that failed."""


class RedisTokenCache:
    """A :class:`~requests_opsnow.TokenCache` in Redis, shared by every host using it."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "requests-opsnow:",
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lock_timeout = lock_timeout
        self._local = MemoryTokenCache()
        self._delete_if_equal = client.register_script(_DELETE_IF_EQUAL)
        self._reset_after_fork()
        _forksafe.register(self)

    def _reset_after_fork(self) -> None:
        self._state_lock = threading.Lock()
        self._outage = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"

    # -- the TokenCache protocol ---------------------------------------------------------

    def get(self, key: str) -> Token | None:
        raw = self._call(self.client.get, self._token_key(key), default=_FAILED)
        if raw is _FAILED:
            return self._local.get(key)
        token = token_from_record(raw) if raw is not None else None
        if raw is not None and token is None:
            log.debug("ignoring an unreadable token value in Redis")
        return token

    def set(self, key: str, token: Token) -> None:
        self._local.set(key, token)
        milliseconds = math.floor((token.expires_at - _clock.now()) * 1000)
        if milliseconds > 0:
            self._call(
                self.client.set, self._token_key(key), token_to_record(token), px=milliseconds
            )

    def delete(self, key: str, token: Token | None = None) -> None:
        self._local.delete(key, token)
        name = self._token_key(key)
        if token is None:
            self._call(self.client.delete, name)
        else:
            self._call(self._delete_if_equal, keys=[name], args=[token_to_record(token)])

    def lock(self, key: str) -> AbstractContextManager[object]:
        return self._locked(key)

    # -- internals -------------------------------------------------------------------------

    def _token_key(self, key: str) -> str:
        return f"{self.prefix}token:{key}"

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock = self.client.lock(
            f"{self.prefix}lock:{key}",
            timeout=self.lock_timeout,
            sleep=LOCK_POLL_INTERVAL,
            blocking_timeout=self.lock_timeout + 1,
        )
        acquired = self._call(lock.acquire, default=None)
        if acquired is None:  # Redis is down: single flight within this process only
            with self._local.lock(key):
                yield
            return
        if not acquired:
            log.warning("Redis token lock busy for %.0f s; fetching without it", self.lock_timeout)
        try:
            yield
        finally:
            if acquired:
                self._release(lock)

    def _release(self, lock: Any) -> None:
        try:
            lock.release()
        except LockError:
            log.debug("the Redis token lock expired before it was released")
        except RedisError as error:
            self._note_failure(error)

    def _call(self, function: Any, *args: Any, default: Any = None, **kwargs: Any) -> Any:
        """Call Redis; on failure note the outage and return ``default``."""
        try:
            result = function(*args, **kwargs)
        except RedisError as error:
            self._note_failure(error)
            return default
        self._note_success()
        return result

    def _note_failure(self, error: RedisError) -> None:
        with self._state_lock:
            first, self._outage = not self._outage, True
        if first:
            log.warning(
                "Redis token cache unavailable (%s); fetching tokens locally until it is back",
                type(error).__name__,
            )

    def _note_success(self) -> None:
        if self._outage:
            with self._state_lock:
                recovered, self._outage = self._outage, False
            if recovered:
                log.warning("Redis token cache is back; sharing tokens again")


_FAILED = object()
