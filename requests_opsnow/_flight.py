"""Single flight: one token fetch at a time, its result shared by every waiter."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    """One in-progress fetch. Waiters get its result, or its exception raised again."""

    def __init__(self, *, early: bool = False) -> None:
        self.early = early
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def succeed(self, result: T) -> None:
        self._result = result
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def wait(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
