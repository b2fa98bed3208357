"""The I/O of the key sources that can misbehave, each bounded: a helper command, a keyring.

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
from typing import Any, Callable, NamedTuple

from . import _clock

EXIT_POLL = 0.05
"""Seconds between checks that a helper has exited while a child of its keeps its output
open (its output's end says so at once otherwise)."""

KILL_WAIT = 5.0
"""Seconds to wait for a killed helper to be gone (SIGKILL cannot be ignored)."""


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
