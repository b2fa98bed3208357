"""The key sources an auth can read again, and the I/O of those that can misbehave, each
bounded: a key file, a helper command, a keyring.

A key that the token endpoint rejects is read again from its source once, and a
different key is used at once (``docs/design.md``, "A new key without a restart"): a
:class:`KeySource` is where an auth's key came from when that place can change while
the process runs. A key file (``OPSNOW_API_KEY_FILE``: a mounted Kubernetes or Docker
secret) is read again whenever it changes.

A helper (``api_key_command``) runs without a shell, in a process group of its
own, with no stdin and its stderr discarded (a failing helper may print the key
there). Its output is read as it comes, up to a limit; it is done when it
exits, even if a child it left keeps the output open; past its time, or past
the limit, its whole group is killed (a wrapper's children, a shell that
ignores SIGTERM). ``docs/design.md``: "Profiles".
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

from . import _clock
from ._runtime import RuntimeState
from ._token import MAX_TOKEN_LENGTH
from ._userfiles import MAX_CONFIG_SIZE, FileVersion, file_version, read_regular
from .errors import ApiKeyUnavailableError

EXIT_POLL = 0.05
"""Seconds between checks that a helper has exited while a child of its keeps its output
open (its output's end says so at once otherwise)."""

KILL_WAIT = 5.0
"""Seconds to wait for a killed helper to be gone (SIGKILL cannot be ignored)."""


class KeySource(Protocol):
    """Where an auth's key came from, when it may hold another key later (a file, a
    profile's keyring entry, command or credentials; not an argument or ``OPSNOW_API_KEY``,
    which cannot change inside a running process)."""

    def changed(self) -> bool:
        """Cheap (a ``stat`` at most): whether it may hold another key than last read."""

    def key_now(self) -> str | None:
        """The key it holds now (blocking: read again if it may have changed, at most once
        per :data:`~requests_opsnow._profiles.KEY_SOURCE_RETRY_AFTER` for a costly source);
        None if it cannot be read now."""


def checked_key(key: str, what: str) -> str:
    """``key``, unless it is too long to be one (the limit of a token: one limit for both)."""
    if len(key) > MAX_TOKEN_LENGTH:
        raise ApiKeyUnavailableError(
            f"{what} is {len(key)} characters long: not an API key (at most {MAX_TOKEN_LENGTH})"
        )
    return key


# -- a key file -------------------------------------------------------------------------


class KeyFile:
    """A file whose first line is the key (``OPSNOW_API_KEY_FILE``, which ``where`` names
    in messages). Links are followed (a Kubernetes secret is a link that the kubelet swaps
    atomically); only a regular file is read, up to 64 kB. Read again when the file
    changes, in this process at most once per change whatever the number of auths."""

    __slots__ = ("_version", "path", "where")

    def __init__(self, path: str, where: str) -> None:
        self.path = path
        self.where = where
        self._version: FileVersion | None = None  # of the key this auth holds

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def key(self) -> str:
        """The key the file holds now; ApiKeyUnavailableError naming the file if none."""
        key, self._version = _key_files.read(self.path, self.where)
        return key

    def changed(self) -> bool:
        try:
            return file_version(os.stat(self.path)) != self._version
        except OSError:
            return True  # gone: key_now says why

    def key_now(self) -> str | None:
        try:
            return self.key()
        except ApiKeyUnavailableError:
            return None  # mid-rotation, say: the key in use stays


class _KeyFiles(RuntimeState):
    """Key files read in this process: each read again only when it changed."""

    _runtime_fields = ("_lock", "_read")

    def __init__(self) -> None:
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[str, tuple[FileVersion, str]] = {}

    def read(self, path: str, where: str) -> tuple[str, FileVersion]:
        try:
            version = file_version(os.stat(path))
            with self._lock:
                known = self._read.get(path)
            if known is not None and known[0] == version:
                return known[1], version
            data, info = read_regular(Path(path), MAX_CONFIG_SIZE, follow_links=True)
        except OSError as exc:
            raise ApiKeyUnavailableError(
                f"{where}: cannot read it ({exc.strerror or type(exc).__name__})"
            ) from None
        lines = data.decode("utf-8", "replace").strip().splitlines()
        key = checked_key(lines[0].strip() if lines else "", f"{where}'s first line")
        if not key:
            raise ApiKeyUnavailableError(f"{where}: the file holds no key")
        version = file_version(info)
        with self._lock:
            self._read[path] = (version, key)
        return key, version


_key_files = _KeyFiles()


# -- a helper command -------------------------------------------------------------------


class Finished(NamedTuple):
    """A helper that exited: its exit status, and what it printed (at most the limit)."""

    status: int
    output: bytes


def run_helper(command: str, *, timeout: float, limit: int) -> Finished | str:
    """Run ``command`` (split like a shell would, but without one); what it printed, or why
    it did not finish (a message that quotes none of its output)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"could not be parsed: {exc}"
    if not argv:
        return "is empty"
    try:
        process = subprocess.Popen(  # noqa: S603 - the user's own command, without a shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=os.name == "posix",  # a group of its own, to stop as one
        )
    except OSError as exc:
        return f"could not be run ({type(exc).__name__}: {exc.strerror or 'bad command'})"
    assert process.stdout is not None
    try:
        outcome = _collect(process, timeout, limit)
    except BaseException:  # an interruption: the helper does not outlive the call
        _stop(process)
        raise
    finally:
        process.stdout.close()
    if isinstance(outcome, str):
        _stop(process)
    return outcome


def _collect(process: subprocess.Popen[bytes], timeout: float, limit: int) -> Finished | str:
    """The helper's output once it exits (or, having closed its output, exits); else why
    it must be stopped."""
    assert process.stdout is not None
    deadline = _clock.monotonic() + timeout
    too_slow = f"took longer than {timeout:g} s; it was stopped"
    too_much = f"printed more than {limit} bytes (a key is one line); it was stopped"
    if os.name != "posix":  # no select() on pipes: read to the end, within the time
        finished = _collect_to_the_end(process, deadline)
        if finished is None:
            return too_slow
        return finished if len(finished.output) <= limit else too_much
    descriptor = process.stdout.fileno()
    os.set_blocking(descriptor, False)
    output = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while True:
            ended = _read_available(descriptor, output, limit)
            if len(output) > limit:
                return too_much
            if ended or process.poll() is not None:
                break
            remaining = deadline - _clock.monotonic()
            if remaining <= 0:
                return too_slow
            selector.select(min(remaining, EXIT_POLL))
    if process.poll() is None:  # it closed its output: its exit status is on its way
        try:
            process.wait(max(0.0, deadline - _clock.monotonic()))
        except subprocess.TimeoutExpired:
            return too_slow
    else:  # it exited: what it wrote before is waiting in the pipe
        _read_available(descriptor, output, limit)
    return Finished(process.returncode, bytes(output)) if len(output) <= limit else too_much


def _read_available(descriptor: int, output: bytearray, limit: int) -> bool:
    """Add what can be read now to ``output`` (up to just past ``limit``); True at the end."""
    while len(output) <= limit:
        try:
            chunk = os.read(descriptor, limit + 1 - len(output))
        except BlockingIOError:
            return False
        if not chunk:
            return True
        output += chunk
    return False


def _collect_to_the_end(process: subprocess.Popen[bytes], deadline: float) -> Finished | None:
    """Elsewhere than POSIX: the whole output, or None past the deadline."""
    try:
        output, _ = process.communicate(timeout=max(0.0, deadline - _clock.monotonic()))
    except subprocess.TimeoutExpired:
        return None
    return Finished(process.returncode, output)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill the helper and everything in its process group, and reap it."""
    with contextlib.suppress(OSError):
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(KILL_WAIT)


class BackgroundCall:
    """``function()`` in a daemon thread of its own, so that its caller can stop waiting.

    For a keyring backend, which may block on an unlock prompt or a D-Bus peer that never
    answers, and which cannot be cancelled: a caller waits :meth:`wait` seconds at most,
    and a call still running then goes on until the backend returns (its thread ends
    with it). Whatever the function raised is kept, not raised: the caller decides what
    of it may be shown (a backend's message may quote a secret).
    """

    def __init__(self, function: Callable[[], Any], name: str) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        # A plain lock as a latch: released once the call ends (``docs/design.md``, "Token
        # lifecycle": no threading.Event on a path a signal handler can interrupt).
        self._ended = threading.Lock()
        self._ended.acquire()
        threading.Thread(target=self._run, args=(function,), name=name, daemon=True).start()

    def _run(self, function: Callable[[], Any]) -> None:
        try:
            self.value = function()
        except BaseException as exc:  # noqa: BLE001 - kept for the caller to judge
            self.error = exc
        finally:
            self._ended.release()

    def wait(self, timeout: float) -> bool:
        """Whether the call ended within ``timeout`` seconds."""
        if self._ended.acquire(timeout=timeout):
            self._ended.release()
            return True
        return False

    @property
    def running(self) -> bool:
        return not self.wait(0)
