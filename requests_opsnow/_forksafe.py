"""Reset locks and in-flight state in a child process after ``fork()``.

A child forked while a parent thread held a lock would otherwise inherit that
lock held forever. Objects register here; the registry holds them weakly.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkSafe(Protocol):
    def _reset_after_fork(self) -> None: ...


_registry: weakref.WeakSet[ForkSafe] = weakref.WeakSet()


def register(obj: ForkSafe) -> None:
    _registry.add(obj)


def _reset_all_in_child() -> None:
    for obj in list(_registry):
        obj._reset_after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_reset_all_in_child)
