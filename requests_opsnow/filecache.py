"""FileTokenCache: one token shared by every process of a user on one machine.

Files live in ``$XDG_CACHE_HOME/requests-opsnow`` (else
``~/.cache/requests-opsnow``): a folder of our own that nobody else can write
(0700), each token file 0600 from the moment it is created, written to a
temporary file and atomically renamed. A cross-process lock (``filelock``)
makes the fetch single-flight across processes. Anything unexpected on disk is
ignored, never a crash; a folder that cannot be used degrades to memory with
one warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from . import _clock
from ._runtime import RuntimeState
from ._token import MAX_RECORD_SIZE, Token, token_from_record, token_to_record
from ._userfiles import current_uid, private_folder, read_regular
from .cache import MemoryTokenCache

log = logging.getLogger("requests_opsnow")

__all__ = ["FileTokenCache"]

LOCK_WAIT = 120.0
"""Longest wait for another process's fetch (which retries for up to ~110 s by
default); then this one fetches anyway, with a warning. A crashed holder's lock
is released by the operating system at once."""

STALE_TEMPORARY_AGE = 300.0
"""Temporary files left by a process killed mid-write are removed after this long."""


def default_cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/requests-opsnow``, else ``~/.cache/requests-opsnow``.

    None when neither is known (no home directory, as in some containers).
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "requests-opsnow"
    try:
        return Path.home() / ".cache" / "requests-opsnow"
    except (RuntimeError, KeyError):
        return None


class FileTokenCache(RuntimeState):
    """A :class:`~requests_opsnow.TokenCache` in files, shared across processes.

    Nothing touches the disk until the first token is fetched. ``lock_wait``:
    how long to wait for another process's fetch (``lock_timeout`` is its old,
    deprecated name).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        lock_wait: float = LOCK_WAIT,
        lock_timeout: float | None = None,
    ) -> None:
        if lock_timeout is not None:
            warnings.warn(
                "FileTokenCache(lock_timeout=) is now lock_wait=", DeprecationWarning, stacklevel=2
            )
            lock_wait = lock_timeout
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.lock_wait = lock_wait
        self._start_runtime()

    _runtime_fields = ("_memory", "_guard", "_file_locks", "_degraded")
    _kept_across_fork = ("_memory", "_degraded")

    def _new_runtime_state(self) -> None:
        self._memory = MemoryTokenCache()  # where tokens go when the folder fails us
        self._guard = threading.Lock()
        self._file_locks: dict[str, Any] = {}
        self._degraded = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r})"

    @property
    def place(self) -> tuple[str, str] | None:
        """The folder: auths whose caches name the same folder share one token lifecycle."""
        return ("file", os.path.abspath(self.directory)) if self.directory is not None else None

    # -- the TokenCache protocol ------------------------------------------------------

    def get(self, key: str) -> Token | None:
        on_disk = self._read(key)
        if not self._degraded:
            return on_disk
        in_memory = self._memory.get(key)  # the folder failed us: the newer of the two
        candidates = [token for token in (on_disk, in_memory) if token is not None]
        return max(candidates, key=lambda token: token.issued_at, default=None)

    def set(self, key: str, token: Token) -> None:
        self._memory.set(key, token)
        try:
            self._write_atomically(self._token_path(key), token)
        except OSError as exc:
            self._degrade(exc)

    def delete(self, key: str, token: Token | None = None) -> None:
        self._memory.delete(key, token)
        try:
            path = self._token_path(key)
            if not path.exists():
                return
            with self.lock(key):
                if token is None or self._read(key) == token:
                    path.unlink(missing_ok=True)
        except OSError as exc:
            self._degrade(exc)

    def lock(self, key: str) -> AbstractContextManager[object]:
        return self._locked(key)

    # -- files --------------------------------------------------------------------------

    def _folder(self) -> Path:
        """The cache folder, created 0700 and checked to be ours alone, never through a
        symbolic link; else OSError."""
        if self.directory is None:
            raise FileNotFoundError("no cache folder: neither XDG_CACHE_HOME nor a home is set")
        private_folder(self.directory)
        return self.directory

    def _check_folder(self) -> None:
        """PermissionError if the folder is a symbolic link, or another user owns it (then
        neither read nor write: whoever owns it could have put any token file there)."""
        assert self.directory is not None
        info = self.directory.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise PermissionError("the cache folder is a symbolic link")
        uid = current_uid()
        if uid is not None and info.st_uid != uid:
            raise PermissionError("the cache folder belongs to another user")

    def _token_path(self, key: str) -> Path:
        if not key.isalnum():  # keys are hex digests; anything else could escape the folder
            raise ValueError("cache keys must be alphanumeric digests")
        if self.directory is None:
            raise FileNotFoundError("no cache folder")
        return self.directory / f"{key}.json"

    def _write_atomically(self, path: Path, token: Token) -> None:
        folder = self._folder()
        temporary = folder / f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(token_to_record(token))
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _remove_stale_temporaries(folder, path.stem)

    def _read(self, key: str) -> Token | None:
        """The token stored for ``key``, or None if missing, expired, corrupt or not ours."""
        try:
            path = self._token_path(key)
            self._check_folder()
            raw = _read_own_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.debug("ignoring the token cache file: %s", type(exc).__name__)
            return None
        token = token_from_record(raw)
        if token is None:
            log.debug("ignoring a corrupt or foreign token cache file")
            return None
        return token if token.expires_at > _clock.now() else None

    # -- locking --------------------------------------------------------------------------

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # Threads first (old filelock releases are not thread-local), then processes.
        with self._memory.lock(key):
            file_lock = self._file_lock(key)
            try:
                yield
            finally:
                if file_lock is not None:
                    file_lock.release()

    def _file_lock(self, key: str) -> Any:
        """The acquired cross-process lock for ``key``; None when it cannot be had."""
        from filelock import FileLock, Timeout  # imported when first needed: keeps import light

        try:
            path = self._folder() / f"{self._token_path(key).stem}.lock"
            with self._guard:
                file_lock = self._file_locks.get(key)
                if file_lock is None:
                    file_lock = FileLock(str(path), timeout=self.lock_wait, mode=0o600)
                    self._file_locks[key] = file_lock
            file_lock.acquire()
        except Timeout:
            log.warning("token cache lock busy for %.0f s; going on without it", self.lock_wait)
            return None
        except OSError as exc:
            self._degrade(exc)
            return None
        return file_lock

    def _degrade(self, error: OSError) -> None:
        with self._guard:
            first, self._degraded = not self._degraded, True
        if first:
            log.warning(
                "token cache folder %s cannot be used (%s); keeping tokens in this"
                " process's memory",
                self.directory,
                error.strerror or str(error) or type(error).__name__,
            )


def _read_own_file(path: Path) -> bytes:
    """Read ``path`` if it is a regular file of ours: no symlinks, FIFOs or other owners."""
    raw, info = read_regular(path, MAX_RECORD_SIZE, follow_links=False)
    if current_uid() not in (None, info.st_uid):
        raise PermissionError("not a regular file owned by this user")
    return raw


def _remove_stale_temporaries(folder: Path, stem: str) -> None:
    """Temporary files of writers killed mid-write: each holds a token, so clear them."""
    cutoff = time.time() - STALE_TEMPORARY_AGE
    for leftover in folder.glob(f".{stem}.*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.lstat().st_mtime < cutoff:
                leftover.unlink()
