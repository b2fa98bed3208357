"""RedisTokenCache: one token for a whole fleet of hosts, through Redis.

Tokens are stored with a TTL equal to their remaining lifetime under
``<prefix>token:<sha256>``; the values hold the token and its expiry, never
the key. A Redis lock makes the fetch single-flight across the fleet: the
holder renews it while it fetches, and a crashed holder's lock expires after
``lock_lease`` seconds. If Redis is down, slow or evicting, requests still work:
tokens are fetched and kept locally, with one warning per outage, Redis is
left alone for a while (a circuit breaker), and sharing resumes when it
answers again.

The cache talks to Redis through connections of its own, with the client's
settings (from any standard connection pool, blocking ones too) but without
the client's retries, and with a 1 s socket timeout where the client has none:
a hung Redis costs one timeout, not a stall. Sentinel and cluster clients are
used as given (set their timeouts), and cannot be copied or pickled.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

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
from ._token import (
    Token,
    backoff_from_record,
    backoff_to_record,
    token_from_record,
    token_to_record,
)
from .cache import MemoryTokenCache

__all__ = ["RedisTokenCache"]

log = logging.getLogger("requests_opsnow")

LOCK_LEASE = 30.0
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

_DELETE_IF_NO_TTL = """
if redis.call('PTTL', KEYS[1]) == -1 then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
"""A lock key without a TTL was not written by a live holder (ours always expire): drop it."""

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

_REBUILDABLE = (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)
"""Connection classes whose settings alone make a new, equivalent connection."""

_FAILED = object()


class RedisTokenCache(RuntimeState):
    """A :class:`~requests_opsnow.TokenCache` in Redis, shared by every host using it.

    ``lock_lease``: how long the fleet lock outlives its holder's last renewal;
    ``lock_wait``: how long to wait for it before fetching without it.
    ``lock_timeout`` is the old name of ``lock_lease`` (deprecated).
    """

    _runtime_fields = (
        "client", "_redis", "_local", "_delete_if_equal", "_delete_if_no_ttl", "_state_lock",
        "_outage", "_pause", "_probe_at",
    )  # fmt: skip
    _kept_across_fork = ("client", "_redis", "_local", "_delete_if_equal", "_delete_if_no_ttl")

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "requests-opsnow:",
        lock_lease: float = LOCK_LEASE,
        lock_wait: float = LOCK_WAIT,
        lock_timeout: float | None = None,
    ) -> None:
        if lock_timeout is not None:
            warnings.warn(
                "RedisTokenCache(lock_timeout=) is now lock_lease=",
                DeprecationWarning,
                stacklevel=2,
            )
            lock_lease = lock_timeout
        self.prefix = prefix
        self.lock_lease = lock_lease
        self.lock_wait = lock_wait
        self._connection = _connection_of(client)  # None: a client to use as given
        self.client = client
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        client = self.__dict__.get("client")
        if client is None:  # a copy: a client of its own, on the same settings
            assert self._connection is not None
            client = _client_for(*self._connection)
        self.client = client
        self._redis = (
            _client_for(*self._connection, own=True) if self._connection is not None else client
        )
        self._local = MemoryTokenCache()
        self._delete_if_equal = self._redis.register_script(_DELETE_IF_EQUAL)
        self._delete_if_no_ttl = self._redis.register_script(_DELETE_IF_NO_TTL)
        self._state_lock = threading.Lock()
        self._outage = False
        self._pause = 0.0
        self._probe_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        if self._connection is None:
            raise TypeError(
                "a RedisTokenCache over a Sentinel or cluster client cannot be copied or"
                " pickled; give it a client made with redis.Redis(...) or Redis.from_url(...)"
            )
        return super().__getstate__()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"

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
        self._call(self._redis.delete, f"{self.prefix}backoff:{key}")  # the way is clear
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

    # -- a backoff window the fleet shares (optional to the protocol) ------------------------

    def backoff(self, key: str) -> tuple[float, str, str] | None:
        """The window after a failed token request, recorded by any host: (until, kind,
        message); None if there is none (or Redis is down)."""
        raw = self._call(self._redis.get, f"{self.prefix}backoff:{key}")
        return backoff_from_record(raw) if raw is not None else None

    def set_backoff(self, key: str, until: float, kind: str, message: str) -> None:
        milliseconds = math.floor((until - _clock.now()) * 1000)
        if milliseconds > 0:
            record = backoff_to_record(until, kind, message)
            self._call(self._redis.set, f"{self.prefix}backoff:{key}", record, px=milliseconds)

    # -- the fleet lock ----------------------------------------------------------------------

    def _token_key(self, key: str) -> str:
        return f"{self.prefix}token:{key}"

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with self._local.lock(key):  # this process's threads queue here, not on Redis
            name = f"{self.prefix}lock:{key}"
            lock = self._redis.lock(
                name,
                timeout=self.lock_lease,
                thread_local=False,  # renewed from another thread; one Lock object per use
            )
            acquired = self._acquire(lock, name)
            if acquired is False:
                log.warning("Redis token lock busy for %.0f s; fetching without it", self.lock_wait)
            if not acquired:  # busy too long, or Redis is down: this process only
                yield
                return
            stop_renewing = self._keep_renewing(lock)
            try:
                yield
            finally:
                stop_renewing()
                self._release(lock)

    def _acquire(self, lock: Any, name: str) -> bool | None:
        """Take the fleet lock within ``lock_wait``: True, False if busy, None if Redis is down.

        A lock key without a TTL is no live holder (ours always expire): it is
        dropped rather than waited for.
        """
        deadline = _clock.monotonic() + self.lock_wait
        while True:
            acquired = self._call(lock.acquire, blocking=False, default=None)
            if acquired is not False:
                return cast("bool | None", acquired)
            if self._call(self._redis.pttl, name, default=None) == -1:
                log.debug("dropping a Redis token lock that has no expiry")
                self._call(self._delete_if_no_ttl, keys=[name])
                continue
            if _clock.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_INTERVAL)  # real time: another host is fetching

    def _keep_renewing(self, lock: Any) -> Any:
        """Renew ``lock`` every third of its timeout until the returned function is called."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_lease / 3):
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


def _connection_of(client: redis.Redis) -> tuple[Any, dict[str, Any]] | None:
    """The connection class and plain settings of a client on a standard pool (blocking
    or not); None for other kinds (Sentinel, cluster), which are used as given."""
    pool = getattr(client, "connection_pool", None)
    connection_class = getattr(pool, "connection_class", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if connection_class not in _REBUILDABLE or not isinstance(kwargs, dict):
        return None
    settings = {
        name: value
        for name, value in kwargs.items()
        if (name in _CONNECTION_SETTINGS or name.startswith("ssl_")) and type(value) is not object
    }
    # redis-py marks a setting that was not given with a bare object(): left out, the
    # default applies. (Copied, it would no longer be that marker, and break connections.)
    return connection_class, settings


def _client_for(
    connection_class: Any, settings: dict[str, Any], *, own: bool = False
) -> redis.Redis:
    """A client with these settings; ``own``: the cache's own, without retries, with timeouts."""
    settings = dict(settings)
    if own:
        settings["retry"] = Retry(NoBackoff(), 0)
        for name in ("socket_timeout", "socket_connect_timeout"):
            if settings.get(name) is None:
                settings[name] = SOCKET_TIMEOUT
    pool = redis.ConnectionPool(connection_class=connection_class, **settings)
    return redis.Redis(connection_pool=pool)
