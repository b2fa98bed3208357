"""FileTokenCache: one token shared by every process of a user on one machine.

Files live in ``$XDG_CACHE_HOME/requests-opsnow`` (else
``~/.cache/requests-opsnow``): the folder is 0700, each token file 0600 from
the moment it is created, written to a temporary file and atomically renamed.
A cross-process lock (``filelock``) makes the fetch single-flight across
processes. Anything unexpected on disk is ignored, never a crash; a folder
that cannot be written degrades to memory with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from . import _clock, _forksafe
from ._token import Token, token_from_record, token_to_record
from .cache import MemoryTokenCache

log = logging.getLogger("requests_opsnow")

__all__ = ["FileTokenCache", "default_cache_dir"]

LOCK_TIMEOUT = 60.0
"""Longest wait for another process's fetch; then this one fetches anyway (with a warning)."""

_MAX_FILE_SIZE = 64 * 1024


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/requests-opsnow``, else ``~/.cache/requests-opsnow``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "requests-opsnow"


class FileTokenCache:
    """A :class:`~requests_opsnow.TokenCache` in files, shared across processes.

    Nothing touches the disk until the first token is stored or locked.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, lock_timeout: float = LOCK_TIMEOUT
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.lock_timeout = lock_timeout
        self._fallback = MemoryTokenCache()
        self._reset_after_fork()
        _forksafe.register(self)

    def _reset_after_fork(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, Any] = {}
        self._warned = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "lock_timeout": self.lock_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], lock_timeout=state["lock_timeout"])  # type: ignore[misc]

    # -- the TokenCache protocol ------------------------------------------------------

    def get(self, key: str) -> Token | None:
        token = self._read(self._path(key))
        if token is None and self._warned:  # the folder failed us: memory is the cache now
            return self._fallback.get(key)
        return token

    def set(self, key: str, token: Token) -> None:
        self._fallback.set(key, token)
        try:
            self._ensure_directory()
            self._write_atomically(self._path(key), token)
        except OSError as exc:
            self._degrade(f"cannot be written ({exc.strerror or type(exc).__name__})")

    def delete(self, key: str, token: Token | None = None) -> None:
        self._fallback.delete(key, token)
        path = self._path(key)
        if not path.exists():
            return
        with self.lock(key):
            if token is not None and self._read(path) != token:
                return
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._degrade(f"cannot be changed ({exc.strerror or type(exc).__name__})")

    def lock(self, key: str) -> AbstractContextManager[object]:
        return self._locked(key)

    # -- files --------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if not key.isalnum():  # keys are hex digests; anything else could escape the folder
            raise ValueError("cache keys must be alphanumeric digests")
        return self.directory / f"{key}.json"

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.stat()
        if info.st_uid == _uid() and stat.S_IMODE(info.st_mode) & 0o077:
            self.directory.chmod(0o700)  # an existing folder others could read: tighten it

    def _write_atomically(self, path: Path, token: Token) -> None:
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(token_to_record(token))
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    def _read(self, path: Path) -> Token | None:
        """The token in ``path``, or None if missing, expired, corrupt or not ours."""
        try:
            raw = _read_own_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("ignoring token cache file %s: %s", path.name, type(exc).__name__)
            return None
        token = token_from_record(raw) if len(raw) <= _MAX_FILE_SIZE else None
        if token is None:
            log.debug("ignoring corrupt or foreign token cache file %s", path.name)
            return None
        return token if token.expires_at > _clock.now() else None

    # -- locking --------------------------------------------------------------------------

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        file_lock = self._file_lock(key)
        if file_lock is None:
            with self._fallback.lock(key):
                yield
            return
        try:
            yield
        finally:
            file_lock.release()

    def _file_lock(self, key: str) -> Any:
        """The acquired cross-process lock for ``key``; None when it cannot be had."""
        from filelock import FileLock, Timeout  # imported when first needed: keeps import light

        with self._guard:
            file_lock = self._locks.get(key)
            if file_lock is None:
                path = str(self.directory / f"{key}.lock")
                file_lock = FileLock(path, timeout=self.lock_timeout, mode=0o600)
                self._locks[key] = file_lock
        try:
            self._ensure_directory()
            file_lock.acquire()
        except Timeout:
            log.warning("token cache lock busy for %.0f s; going on without it", self.lock_timeout)
            return None
        except OSError as exc:
            self._degrade(f"cannot be locked ({exc.strerror or type(exc).__name__})")
            return None
        return file_lock

    def _degrade(self, problem: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "token cache folder %s %s; keeping tokens in this process's memory",
                self.directory,
                problem,
            )


def _uid() -> int | None:
    getuid = getattr(os, "getuid", None)  # not on Windows
    return int(getuid()) if getuid is not None else None


def _read_own_file(path: Path) -> bytes:
    """Read ``path`` if it is a regular file of ours: no symlinks, no other owner."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or _uid() not in (None, info.st_uid):
            raise PermissionError("not a regular file owned by this user")
        return handle.read(_MAX_FILE_SIZE + 1)
