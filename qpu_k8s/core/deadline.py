"""Run a blocking call under a deadline without ever blocking the caller or process exit.

qrmi has no client timeout: a vendor that accepts a connection and never answers blocks the
calling thread forever. qrmi releases the GIL, so a watchdog works, but a stuck worker in a
ThreadPoolExecutor keeps the interpreter from exiting (the executor joins at shutdown). So
each call runs in its own daemon thread, which the process can abandon.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call did not finish in time; it may still be running in an abandoned thread."""


class _Abandoned:
    """Count of timed-out calls whose threads are still running."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0


_ABANDONED = _Abandoned()


def abandoned_calls() -> int:
    """How many timed-out calls are still running (a gauge for metrics and tests)."""
    with _ABANDONED.lock:
        return _ABANDONED.count


def _start(fn: Callable[[], T], name: str) -> Future[T]:
    fut: Future[T] = Future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(result)
        finally:
            with _ABANDONED.lock:
                if getattr(fut, "_qpu_abandoned", False):
                    _ABANDONED.count -= 1

    fut.set_running_or_notify_cancel()
    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


def _abandon(fut: Future[T]) -> None:
    with _ABANDONED.lock:
        if not fut.done():
            fut._qpu_abandoned = True  # type: ignore[attr-defined]
            _ABANDONED.count += 1


def _on_late(fut: Future[T], on_late: Callable[[Future[T]], None] | None) -> None:
    """After a timeout: hand the finished call to ``on_late`` (in the thread that ran it)."""
    if on_late is not None:
        fut.add_done_callback(on_late)


def call_with_deadline(
    fn: Callable[[], T],
    timeout: float,
    name: str = "qrmi-call",
    *,
    on_late: Callable[[Future[T]], None] | None = None,
) -> T:
    """Return ``fn()``, or raise DeadlineExceeded after ``timeout`` seconds.

    ``on_late`` receives the call's future once a call that missed its deadline ends (an
    acquire whose session must still be released, a release whose outcome must be
    recorded), in the thread that ran it.
    """
    fut = _start(fn, name)
    try:
        return fut.result(timeout=timeout)
    except TimeoutError:
        _abandon(fut)
        _on_late(fut, on_late)
        raise DeadlineExceeded(f"no answer within {timeout:g}s") from None


async def in_thread(fn: Callable[[], T], name: str = "qrmi-call") -> T:
    """Await ``fn()`` run in its own daemon thread, from an event loop.

    No deadline of its own: ``fn`` carries one (every :class:`QrmiClient` call does). A
    thread per call rather than the loop's default executor, which has a handful of
    workers on a small node and would queue probes behind each other.
    """
    return await asyncio.wrap_future(_start(fn, name))
