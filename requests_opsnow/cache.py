"""Token stores.

Every store implements :class:`TokenCache`: ``get`` / ``set`` / ``delete``
plus ``lock``, which makes the fetch-and-store single-flight across whatever
the store spans (a process, a host, a fleet). Keys are :func:`cache_key`
digests, never the raw API key.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, runtime_checkable

from . import _clock
from ._runtime import RuntimeState
from ._token import Token

__all__ = ["MemoryTokenCache", "TokenCache"]


def cache_key(token_url: str, api_key: str) -> str:
    """SHA-256 of the token URL and the key: identifies the key without revealing it."""
    return hashlib.sha256(f"{token_url}\n{api_key}".encode()).hexdigest()


@runtime_checkable
class TokenCache(Protocol):
    """What :class:`~requests_opsnow.OpsNowAuth` needs from a token store."""

    def get(self, key: str) -> Token | None:
        """The stored token for ``key``, or None. Callers check its expiry."""

    def set(self, key: str, token: Token) -> None:
        """Store ``token``; a store that cannot write degrades, it does not raise."""

    def delete(self, key: str, token: Token | None = None) -> None:
        """Forget the token for ``key`` — only if it is still ``token``, when given."""

    def lock(self, key: str) -> AbstractContextManager[object]:
        """Held around "look in the cache, else fetch and store" for ``key``."""


MEMORY_KEYS = 10_000
"""The most tokens a :class:`MemoryTokenCache` keeps, the least recently used forgotten
first (expired ones as soon as they are seen): a few MB at most, however many keys."""


class MemoryTokenCache(RuntimeState):
    """A dict in this process, of at most :data:`MEMORY_KEYS` tokens. Copies and pickles
    start empty.

    Auths need none by default (their shared token lifecycle keeps the token in
    memory); the file and Redis stores use one as their fallback. A key's lock
    exists only while someone holds or waits for it.
    """

    _runtime_fields = ("_tokens", "_guard", "_key_locks")
    _kept_across_fork = ("_tokens",)

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._tokens: OrderedDict[str, Token] = OrderedDict()
        self._guard = threading.Lock()
        self._key_locks: dict[str, tuple[threading.Lock, int]] = {}  # the lock, its users

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def get(self, key: str) -> Token | None:
        token = self._tokens.get(key)
        if token is not None and token.expires_at <= _clock.now():
            self.delete(key, token)
            return None
        return token

    def set(self, key: str, token: Token) -> None:
        with self._guard:
            self._tokens[key] = token
            self._tokens.move_to_end(key)
            while len(self._tokens) > MEMORY_KEYS:
                self._tokens.popitem(last=False)

    def delete(self, key: str, token: Token | None = None) -> None:
        with self._guard:
            if token is None or self._tokens.get(key) == token:
                self._tokens.pop(key, None)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with self._guard:
            key_lock, users = self._key_locks.get(key, (None, 0))
            key_lock = key_lock or threading.Lock()
            self._key_locks[key] = (key_lock, users + 1)
        try:
            with key_lock:
                yield
        finally:
            with self._guard:
                _, users = self._key_locks[key]
                if users == 1:
                    del self._key_locks[key]
                else:
                    self._key_locks[key] = (key_lock, users - 1)

    def lock(self, key: str) -> AbstractContextManager[object]:
        return self._locked(key)
