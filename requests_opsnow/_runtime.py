"""One rule for copies, pickles and forks: configuration travels, runtime state does not.

An object's fields are of two kinds. Its *configuration* (a URL, a folder, a
prefix) means the same thing in any process. Its *runtime state* (locks,
in-flight fetches, tokens, connections) belongs to one process and one
moment. A class derived from :class:`RuntimeState` names its runtime fields
once, in ``_runtime_fields``, and builds them in ``_new_runtime_state()``;
from that one declaration:

- ``pickle`` and ``copy.deepcopy`` carry the configuration only, and the copy
  builds fresh runtime state;
- a child process after ``fork()`` rebuilds the runtime state too (a lock a
  parent thread held at the fork would otherwise stay held forever), keeping
  the fields named in ``_kept_across_fork`` (a token is as valid in the child).

A test checks that ``_new_runtime_state()`` sets exactly the declared fields,
so a new lock or cache cannot slip into a pickle unnoticed.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, ClassVar

_live: weakref.WeakSet[RuntimeState] = weakref.WeakSet()


class RuntimeState:
    _runtime_fields: ClassVar[tuple[str, ...]] = ()
    """Every attribute ``_new_runtime_state()`` sets; never pickled or copied."""

    _kept_across_fork: ClassVar[tuple[str, ...]] = ()
    """Runtime fields a forked child keeps (the rest are rebuilt)."""

    def _new_runtime_state(self) -> None:
        """Set every field in ``_runtime_fields`` to its initial value."""

    def _start_runtime(self) -> None:
        """Build the runtime state; call at the end of ``__init__``."""
        self._new_runtime_state()
        if set(self._runtime_fields) - set(self._kept_across_fork):
            _live.add(self)  # something to rebuild in a forked child

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._runtime_fields:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_runtime()

    def _after_fork_in_child(self) -> None:
        kept = {name: getattr(self, name) for name in self._kept_across_fork}
        self._new_runtime_state()
        self.__dict__.update(kept)


def _rebuild_all_in_child() -> None:
    for obj in list(_live):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_rebuild_all_in_child)
