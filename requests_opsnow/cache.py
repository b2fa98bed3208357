"""Token stores.

Every store implements :class:`TokenCache`: ``get`` / ``set`` / ``delete``
plus ``lock``, which makes the fetch-and-store single-flight across whatever
the store spans (a process, a host, a fleet). Keys are :func:`cache_key`
digests, never the raw API key.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, runtime_checkable

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


class MemoryTokenCache(RuntimeState):
    """A dict in this process. Copies and pickles start empty.

    Auths need none by default (their shared token lifecycle keeps the token in
    memory); the file and Redis stores use one as their fallback.
    """

    _runtime_fields = ("_tokens", "_guard", "_key_locks")
    _kept_across_fork = ("_tokens",)

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._guard = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def get(self, key: str) -> Token | None:
        return self._tokens.get(key)

    def set(self, key: str, token: Token) -> None:
        self._tokens[key] = token

    def delete(self, key: str, token: Token | None = None) -> None:
        with self._guard:
            if token is None or self._tokens.get(key) == token:
                self._tokens.pop(key, None)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with self._guard:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            yield

    def lock(self, key: str) -> AbstractContextManager[object]:
        return self._locked(key)
