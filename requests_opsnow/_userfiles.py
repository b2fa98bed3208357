"""The user's files (config, credentials, token records): opened one way, judged, replaced.

Whatever is at a path is outside data until checked. :func:`read_regular` is
the one way the package reads such a file: a regular file only (a FIFO would
block the reader, a device would never end), opened without blocking, read up
to a limit, and, where the caller says so, without following a symbolic link.
:func:`trust_problem` is the rule for who may have written a file the package
obeys (ssh's and git's rule), and :func:`private_folder` the rule for a folder
the package writes secrets into. ``docs/design.md``: "Profiles", "Stores".
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

MAX_CONFIG_SIZE = 65536
"""The largest config or credentials file read, in bytes (a profile takes about a hundred)."""


def read_regular(path: Path, limit: int, *, follow_links: bool) -> tuple[bytes, os.stat_result]:
    """The contents of ``path`` and its ``fstat``; OSError (its ``strerror`` fit for a message)
    if it cannot be opened, is not a regular file, or holds more than ``limit`` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags)
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data, info


def trust_problem(path: Path, info: os.stat_result, *, private: bool = False) -> str | None:
    """Why the file or folder ``path`` (whose stat is ``info``) must not be obeyed, with the
    fix; None if it is the user's (or root's) and only they may write it (and, if
    ``private``, read it)."""
    uid = current_uid()
    if uid is None:  # Windows: no owners or mode bits of this kind
        return None
    if info.st_uid not in (uid, 0):
        return (
            f"it belongs to another user (uid {info.st_uid}), who could change it: if it is"
            f" yours, chown {_user_name(uid)} {path}; otherwise remove it"
        )
    mode = stat.S_IMODE(info.st_mode)
    if private and mode & 0o077:
        return f"it holds keys and others may read it (mode {mode:04o}): chmod 600 {path}"
    if mode & 0o022:
        return f"group or others may write it (mode {mode:04o}): chmod go-w {path}"
    return None


def private_folder(path: Path) -> None:
    """Make ``path`` a folder of this user's that only they can use (created 0700, tightened
    to 0700); PermissionError if it is a symbolic link, not a folder, or another user's. A
    link is never followed: in a shared folder, another user could point it anywhere."""
    path.parent.mkdir(parents=True, exist_ok=True)  # as ``mkdir -p`` makes them
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise PermissionError(f"{path} is a symbolic link or not a folder") from None
        raise
    try:
        info = os.fstat(descriptor)
        uid = current_uid()
        if uid is not None and info.st_uid != uid:
            raise PermissionError(f"{path} belongs to another user")
        if stat.S_IMODE(info.st_mode) & 0o077 and hasattr(os, "fchmod"):
            os.fchmod(descriptor, 0o700)  # an existing folder others could use: tighten it
    finally:
        os.close(descriptor)


def replace_atomically(
    path: Path, text: str, *, through_link: bool = False, sync: bool = False, mtime: float = 0.0
) -> None:
    """Replace the file at ``path`` with ``text``: a new 0600 file, written and renamed over
    it, so that a reader sees the old file or the new, never part of one.

    ``through_link``: a symbolic link (a dotfile manager's) stays a link and its target is
    the file replaced, in the target's own folder; else a link at ``path`` is replaced, never
    followed. ``sync``: flushed to disk before the rename. ``mtime``: the new file's
    modification time, set before it appears (the token cache's sweep reads expiry there).
    """
    target = Path(os.path.realpath(path)) if through_link and path.is_symlink() else path
    # mkstemp: a new file (O_EXCL, 0600), never one someone left or linked there.
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        if mtime:
            os.utime(temporary, (mtime, mtime))
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


FileVersion = tuple[int, ...]
"""What tells one version of a file from the next (see :func:`file_version`)."""


def file_version(info: os.stat_result) -> FileVersion:
    """What tells one version of a file from the next: a rename puts a new inode in
    place, and a write moves the modification and change times (or at least the size,
    where those times are coarse)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def current_uid() -> int | None:
    getuid = getattr(os, "getuid", None)  # not on Windows
    return int(getuid()) if getuid is not None else None


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)
