"""FileTokenCache: one token shared by every process of a user on one machine.

Files live in ``$XDG_CACHE_HOME/requests-opsnow`` (else
``~/.cache/requests-opsnow``): a folder of our own that nobody else can write
(0700), each token file 0600 from the moment it is created, written to a
temporary file and atomically renamed. A cross-process lock (``filelock``)
makes the fetch single-flight across processes. Anything unexpected on disk is
ignored, never a crash; a folder that cannot be used degrades to memory with
one warning.

Every file's modification time is when it stops meaning anything (a token's
expiry, a backoff window's end), so that a writer passing by can sweep the
folder with one ``stat`` per file, at most once per :data:`SWEEP_INTERVAL` for
all processes together: a read or write never scans the folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from . import _clock
from ._runtime import RuntimeState
from ._token import (
    MAX_RECORD_SIZE,
    Token,
    backoff_from_record,
    backoff_to_record,
    token_from_record,
    token_to_record,
)
from ._userfiles import current_uid, private_folder, read_regular, replace_atomically
from .cache import MemoryTokenCache

log = logging.getLogger("requests_opsnow")

__all__ = ["FileTokenCache"]

LOCK_WAIT = 120.0
"""Longest wait for another process's fetch (which retries for up to ~110 s by
default); then this one fetches anyway, with a warning. A crashed holder's lock
is released by the operating system at once."""

STALE_TEMPORARY_AGE = 300.0
"""Temporary files left by a process killed mid-write are removed after this long."""

SWEEP_INTERVAL = 60.0
"""Seconds between two sweeps of a folder, by whichever process writes a token then; a
sweep removes expired tokens, ended backoff windows, their locks, and stale temporaries."""

SWEEP_KEYS = 500
"""The most keys one sweep removes the files of (about 0.1 s of one writer's time); the
rest wait for the next sweep."""

_SWEPT = ".swept"
"""The folder's sweep marker: its modification time is when the next sweep is due."""


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

    _runtime_fields = ("_memory", "_guard", "_degraded", "_sweep_due")
    _kept_across_fork = ("_memory", "_degraded", "_sweep_due")

    def _new_runtime_state(self) -> None:
        self._memory = MemoryTokenCache()  # where tokens go when the folder fails us
        self._guard = threading.Lock()
        self._degraded = False
        self._sweep_due = 0.0  # wall-clock, as the marker says; 0: look at the marker

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
            path = self._token_path(key)
            folder = self._folder()
            replace_atomically(path, token_to_record(token), mtime=token.expires_at)
            path.with_suffix(".backoff").unlink(missing_ok=True)  # a token: the way is clear
        except OSError as exc:
            self._degrade(exc)
            return
        try:
            self._sweep_if_due(folder)
        except OSError as exc:  # the token is stored: a sweep that fails waits for the next
            log.debug("token cache folder not swept: %s", type(exc).__name__)

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

    # -- a backoff window the processes share (optional to the protocol) ------------------

    def backoff(self, key: str) -> tuple[float, str, str] | None:
        """The window after a failed token request, recorded by any process: (until, kind,
        message); None if there is none."""
        try:
            raw = self._read_file(self._token_path(key).with_suffix(".backoff"))
        except OSError:
            return None
        return backoff_from_record(raw)

    def set_backoff(self, key: str, until: float, kind: str, message: str) -> None:
        try:
            path = self._token_path(key).with_suffix(".backoff")
            self._folder()
            replace_atomically(path, backoff_to_record(until, kind, message), mtime=until)
        except OSError as exc:
            self._degrade(exc)

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

    def _read(self, key: str) -> Token | None:
        """The token stored for ``key``, or None if missing, expired, corrupt or not ours."""
        try:
            raw = self._read_file(self._token_path(key))
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

    def _read_file(self, path: Path) -> bytes:
        """A file of the folder, if the folder and the file are ours; else OSError."""
        self._check_folder()
        return _read_own_file(path)

    # -- the sweep ------------------------------------------------------------------------

    def _sweep_if_due(self, folder: Path) -> None:
        """Sweep the folder if no process has for :data:`SWEEP_INTERVAL`: the marker's
        modification time says when; this process reads it at most once per interval."""
        now = _clock.now()
        if now < self._sweep_due:
            return
        marker = folder / _SWEPT
        with contextlib.suppress(FileNotFoundError):
            due = marker.lstat().st_mtime
            if now < due:
                self._sweep_due = due
                return
        self._sweep_due = now + SWEEP_INTERVAL
        descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | _NO_FOLLOW, 0o600)
        os.close(descriptor)
        os.utime(marker, (self._sweep_due, self._sweep_due))  # claimed: others skip
        _sweep(folder, now, self._file_lock)

    # -- locking --------------------------------------------------------------------------

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # Threads first (old filelock releases are not thread-local), then processes.
        with self._memory.lock(key):
            try:
                file_lock = self._file_lock(key)
            except OSError as exc:
                self._degrade(exc)
                file_lock = None
            try:
                yield
            finally:
                if file_lock is not None:
                    file_lock.release()

    def _file_lock(self, key: str, wait: float | None = None) -> Any:
        """The acquired cross-process lock for ``key``, waited for up to ``wait`` (default:
        ``lock_wait``); None if busy that long. A new lock object each time: the cache keeps
        nothing per key."""
        from filelock import FileLock, Timeout  # imported when first needed: keeps import light

        wait = self.lock_wait if wait is None else wait
        try:
            path = self._folder() / f"{self._token_path(key).stem}.lock"
            file_lock = FileLock(str(path), timeout=wait, mode=0o600)
            file_lock.acquire()
        except Timeout:
            if wait:
                log.warning("token cache lock busy for %.0f s; going on without it", wait)
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


_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)

_MEANINGFUL_UNTIL_MTIME = (".json", ".backoff")
"""A key's files whose modification time is when they stop meaning anything."""


def _sweep(folder: Path, now: float, file_lock: Any) -> None:
    """Remove the folder's expired tokens and ended backoff windows with their locks (a
    key's files together, under its lock taken without waiting), and stale temporaries.

    One ``stat`` per file. A key whose lock is busy is left for the next sweep. Token
    writers hold the key's lock, so a token written meanwhile is never removed.
    """
    live: set[str] = set()
    expired: set[str] = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            key, suffix = os.path.splitext(entry.name)
            if key.isalnum() and suffix == ".lock":
                expired.add(key)  # unless its token or window lives: no stat needed
                continue
            meaningful = key.isalnum() and suffix in _MEANINGFUL_UNTIL_MTIME
            temporary = entry.name.startswith(".") and suffix == ".tmp"
            if not (meaningful or temporary):
                continue  # not ours: left alone
            with contextlib.suppress(OSError):
                modified = entry.stat(follow_symlinks=False).st_mtime
                if meaningful:
                    (live if modified > now else expired).add(key)
                elif modified < now - STALE_TEMPORARY_AGE:
                    os.unlink(entry.path)
    for key in sorted(expired - live)[:SWEEP_KEYS]:
        _forget_key(folder, key, now, file_lock)


def _forget_key(folder: Path, key: str, now: float, file_lock: Any) -> None:
    """Remove ``key``'s files if, under its lock, none has come to mean something again."""
    lock = file_lock(key, 0.0)
    if lock is None:
        return  # in use: a process is fetching this key's token
    try:
        for suffix in _MEANINGFUL_UNTIL_MTIME:
            with contextlib.suppress(FileNotFoundError):
                if (folder / f"{key}{suffix}").lstat().st_mtime > now:
                    return  # written since the scan
        for suffix in (*_MEANINGFUL_UNTIL_MTIME, ".lock"):  # the lock last, while held
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / f"{key}{suffix}")
    finally:
        lock.release()
