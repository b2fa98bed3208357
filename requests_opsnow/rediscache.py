"""RedisTokenCache: one token for a whole fleet of hosts, through Redis.

Tokens are stored with a TTL equal to their remaining lifetime under
``<prefix>token:<sha256>``; the values hold the token and its expiry, never
the key. A Redis lock makes the fetch single-flight across the fleet: the
holder renews it while it fetches, and a crashed holder's lock expires after
``lock_timeout``. If Redis is down, slow or evicting, requests still work:
tokens are fetched and kept locally, with one warning per outage, Redis is
left alone for a while (a circuit breaker), and sharing resumes when it
answers again.

The cache talks to Redis through connections of its own, with the client's
settings but without the client's retries, and with a 1 s socket timeout
where the client has none: a hung Redis costs one timeout, not a stall.
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
    from redis.backoff import NoBackoff
    from redis.exceptions import LockError, RedisError, ResponseError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisTokenCache needs redis-py: pip install 'requests-opsnow[redis]'"
    ) from exc

from . import _clock
from ._runtime import RuntimeState
from ._token import Token, token_from_record, token_to_record
from .cache import MemoryTokenCache

__all__ = ["RedisTokenCache"]

log = logging.getLogger("requests_opsnow")

LOCK_TIMEOUT = 30.0
"""Seconds the fleet lock outlives its holder's last renewal: a crashed holder
blocks the others this long at most. A live holder renews it every third of it."""

LOCK_WAIT = 120.0
"""Longest wait for the lock while another host fetches (a default fetch retries for up to
~110 s); then this host fetches anyway, with a warning."""

LOCK_POLL_INTERVAL = 0.05
"""Seconds between a waiter's attempts to take the lock."""

SOCKET_TIMEOUT = 1.0
"""Socket and connect timeout of the cache's connections when the client sets none."""

BREAKER_FIRST_PAUSE = 2.0
BREAKER_MAX_PAUSE = 30.0
"""After a failure Redis is left alone this long (doubling up to the maximum) before one probe."""

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Atomic compare-and-delete: drop the shared token only if it is still the one that failed."""

_CONNECTION_SETTINGS = frozenset(
    {
        "host", "port", "db", "username", "password", "path", "client_name",
        "socket_timeout", "socket_connect_timeout", "socket_keepalive",
        "socket_keepalive_options", "encoding", "encoding_errors", "decode_responses",
        "credential_provider", "protocol", "health_check_interval",
    }
)  # fmt: skip
"""What the cache copies from the client's connection pool (plus ``ssl_*``)."""

_FAILED = object()


class RedisTokenCache(RuntimeState):
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
        self._redis = _without_retries(client)
        self._local = MemoryTokenCache()
        self._delete_if_equal = self._redis.register_script(_DELETE_IF_EQUAL)
        self._start_runtime()

    _runtime_fields = ("_state_lock", "_outage", "_pause", "_probe_at")

    def _new_runtime_state(self) -> None:
        self._state_lock = threading.Lock()
        self._outage = False
        self._pause = 0.0
        self._probe_at = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisTokenCache:
        return RedisTokenCache(self.client, prefix=self.prefix, lock_timeout=self.lock_timeout)

    def __reduce__(self) -> tuple[Any, ...]:
        pool = self.client.connection_pool
        settings = _settings_of(pool)
        if settings is None:
            raise TypeError("a RedisTokenCache over this kind of Redis client cannot be pickled")
        return (_rebuild, (pool.connection_class, settings, self.prefix, self.lock_timeout))

    def close(self) -> None:
        """Close the cache's own connections to Redis (not the client's)."""
        if self._redis is not self.client:
            self._redis.close()

    # -- the TokenCache protocol ---------------------------------------------------------

    def get(self, key: str) -> Token | None:
        raw = self._call(self._redis.get, self._token_key(key), default=_FAILED)
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
                self._redis.set, self._token_key(key), token_to_record(token), px=milliseconds
            )

    def delete(self, key: str, token: Token | None = None) -> None:
        self._local.delete(key, token)
        name = self._token_key(key)
        if token is None:
            self._call(self._redis.delete, name)
        else:
            self._call(self._delete_if_equal, keys=[name], args=[token_to_record(token)])

    def lock(self, key: str) -> AbstractContextManager[object]:
        return self._locked(key)

    # -- the fleet lock ----------------------------------------------------------------------

    def _token_key(self, key: str) -> str:
        return f"{self.prefix}token:{key}"

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with self._local.lock(key):  # this process's threads queue here, not on Redis
            lock = self._redis.lock(
                f"{self.prefix}lock:{key}",
                timeout=self.lock_timeout,
                sleep=LOCK_POLL_INTERVAL,
                blocking_timeout=max(LOCK_WAIT, self.lock_timeout + 1),
                thread_local=False,  # renewed from another thread; one Lock object per use
            )
            acquired = self._call(lock.acquire, default=None)
            if acquired is False:
                log.warning("Redis token lock busy for %.0f s; fetching without it", LOCK_WAIT)
            if not acquired:  # busy too long, or Redis is down: this process only
                yield
                return
            stop_renewing = self._keep_renewing(lock)
            try:
                yield
            finally:
                stop_renewing()
                self._release(lock)

    def _keep_renewing(self, lock: Any) -> Any:
        """Renew ``lock`` every third of its timeout until the returned function is called."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_timeout / 3):
                try:
                    lock.reacquire()
                except (LockError, RedisError):
                    return

        renewer = threading.Thread(target=renew, name="requests-opsnow-lock-renewal", daemon=True)
        renewer.start()

        def stop_renewing() -> None:
            stop.set()
            renewer.join()

        return stop_renewing

    def _release(self, lock: Any) -> None:
        try:
            lock.release()
        except LockError:
            log.debug("the Redis token lock expired before it was released")
        except RedisError as error:
            self._note_failure(error)

    # -- failures: a circuit breaker -----------------------------------------------------------

    def _call(self, function: Any, *args: Any, default: Any = None, **kwargs: Any) -> Any:
        """Call Redis unless it is resting after a failure; on failure return ``default``."""
        if self._outage and _clock.now() < self._probe_at:
            return default
        try:
            result = function(*args, **kwargs)
        except ResponseError as error:  # Redis answered, e.g. WRONGTYPE: a bad value, not an outage
            log.debug("Redis refused a token cache command: %s", type(error).__name__)
            return default
        except RedisError as error:
            self._note_failure(error)
            return default
        self._note_success()
        return result

    def _note_failure(self, error: RedisError) -> None:
        with self._state_lock:
            first = not self._outage
            self._outage = True
            self._pause = BREAKER_FIRST_PAUSE if first else min(self._pause * 2, BREAKER_MAX_PAUSE)
            self._probe_at = _clock.now() + self._pause
        if first:
            log.warning(
                "Redis token cache unavailable (%s); fetching tokens locally until it is back",
                type(error).__name__,
            )

    def _note_success(self) -> None:
        if not self._outage:
            return
        with self._state_lock:
            recovered, self._outage = self._outage, False
        if recovered:
            log.warning("Redis token cache is back; sharing tokens again")


def _settings_of(pool: Any) -> dict[str, Any] | None:
    """The plain connection settings of a standard pool; None for other kinds."""
    if type(pool) is not redis.ConnectionPool:  # sentinel, cluster...: use them as given
        return None
    return {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name in _CONNECTION_SETTINGS or name.startswith("ssl_")
    }


def _without_retries(client: redis.Redis) -> redis.Redis:
    """A client on the same server and settings, without retries, with a socket timeout."""
    pool = client.connection_pool
    settings = _settings_of(pool)
    if settings is None:
        return client
    return _rebuild_client(pool.connection_class, settings)


def _rebuild_client(connection_class: Any, settings: dict[str, Any]) -> redis.Redis:
    settings = dict(settings, retry=Retry(NoBackoff(), 0))
    for name in ("socket_timeout", "socket_connect_timeout"):
        if settings.get(name) is None:
            settings[name] = SOCKET_TIMEOUT
    pool = redis.ConnectionPool(connection_class=connection_class, **settings)
    return redis.Redis(connection_pool=pool)


def _rebuild(
    connection_class: Any, settings: dict[str, Any], prefix: str, lock_timeout: float
) -> RedisTokenCache:
    """Unpickle: a cache on a new client with the pickled connection settings."""
    client = redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=connection_class, **settings)
    )
    return RedisTokenCache(client, prefix=prefix, lock_timeout=lock_timeout)
