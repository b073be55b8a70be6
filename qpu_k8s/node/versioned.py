"""A value that streams to many readers: the device list (ListAndWatch) and device health
(the DRA health stream) both send the full current value now and again after every change.

Writers :meth:`~Versioned.set` a new value; it counts as a change only when it differs
from the current one by ``same`` (so a probe that only moves a timestamp wakes nobody).
Readers wait for a version newer than the one they last sent, or stream values until the
value is closed or their own call ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# How often a waiting stream re-checks whether its caller is still there.
POLL = 1.0


def _equal(a: object, b: object) -> bool:
    return a == b


class Versioned(Generic[T]):
    """Thread-safe current value with a version that goes up on every change."""

    def __init__(self, initial: T, same: Callable[[T, T], bool] = _equal) -> None:
        self._cond = threading.Condition()
        self._value = initial
        self._version = 0
        self._closed = False
        self._same = same

    def set(self, value: T) -> bool:
        """Replace the value; True (and every waiter woken) when it changed."""
        with self._cond:
            if self._version > 0 and self._same(self._value, value):
                return False
            self._value = value
            self._version += 1
            self._cond.notify_all()
            return True

    def current(self) -> tuple[int, T]:
        with self._cond:
            return self._version, self._value

    def wait_newer(
        self, version: int, stop: Callable[[], bool], timeout: float | None = None
    ) -> tuple[int, T] | None:
        """Block until the value is newer than ``version``; None when ``stop()`` or closed."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or stop() or self._version > version, timeout=timeout
            )
            if self._closed or stop() or self._version <= version:
                return None
            return self._version, self._value

    def stream(self, active: Callable[[], bool] = lambda: True) -> Iterator[T]:
        """The value now and after every change, until closed or ``active()`` is false."""
        seen = -1
        while True:
            with self._cond:
                while self._version == seen and not self._closed:
                    self._cond.wait(POLL)
                    if not active():
                        return
                if self._closed:
                    return
                seen, value = self._version, self._value
            yield value

    def wake(self) -> None:
        """Wake waiters so they re-check their stop condition."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """End every wait and stream (the agent is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
