"""Run a blocking call under a deadline without ever blocking the caller or process exit.

qrmi has no client timeout: a vendor that accepts a connection and never answers blocks the
calling thread forever. qrmi releases the GIL, so a watchdog works, but a stuck worker in a
ThreadPoolExecutor keeps the interpreter from exiting (the executor joins at shutdown). So
calls run on daemon threads, which the process can abandon: idle ones are reused (starting
a thread costs more than a fast vendor call's own overhead), a call that misses its
deadline keeps its thread until the vendor answers, and a new thread is started whenever
none is idle, so a stuck call never delays another.
"""

from __future__ import annotations

import _thread
import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

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


class Outcome(Generic[T]):
    """One call running on a worker thread: a raw lock held until it ends.

    Lighter than ``concurrent.futures.Future`` (no condition variable per wait): a fast
    vendor call's whole overhead here is the two thread hand-offs.
    """

    __slots__ = ("_abandoned", "_done", "_error", "_late", "_result")

    def __init__(self) -> None:
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        self._late: Callable[[Outcome[T]], None] | None = None

    def run(self, fn: Callable[[], T]) -> None:
        try:
            self._result = fn()
        except BaseException as exc:
            self._error = exc
        with _ABANDONED.lock:
            self._done.release()
            late, abandoned = self._late, self._abandoned
            if abandoned:
                _ABANDONED.count -= 1
        if late is not None:
            late(self)

    def wait(self, timeout: float) -> bool:
        if not self._done.acquire(timeout=timeout):
            return False
        self._done.release()
        return True

    def done(self) -> bool:
        return not self._done.locked()

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def abandon(self, on_late: Callable[[Outcome[T]], None] | None) -> None:
        """The caller gave up: count it as stuck, and hand its end to ``on_late``."""
        with _ABANDONED.lock:
            if not self.done():
                self._abandoned = True
                self._late = on_late
                _ABANDONED.count += 1
                return
        if on_late is not None:  # it ended just now, after the wait gave up
            on_late(self)


# Idle worker threads wait this long for a call before they exit.
IDLE_SECONDS = 30.0


class _Workers:
    """Daemon threads that run calls; idle ones are reused, none is ever waited for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def run(self, job: Callable[[], None], name: str) -> None:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
            threading.Thread(target=worker.serve, name=name, daemon=True).start()
        worker.give(job)

    def idle(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Take an idle worker out of service; False if a caller has just picked it."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False


class _Worker:
    __slots__ = ("_job", "_pool", "_wake")

    def __init__(self, pool: _Workers) -> None:
        self._pool = pool
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._job: Callable[[], None] | None = None

    def give(self, job: Callable[[], None]) -> None:
        self._job = job
        self._wake.release()

    def serve(self) -> None:
        while True:
            self._wake.acquire()
            job, self._job = self._job, None
            assert job is not None
            job()
            self._pool.idle(self)
            if not self._wake.acquire(timeout=IDLE_SECONDS):
                if self._pool.retire(self):
                    return
                self._wake.acquire()  # a caller took this worker just as it timed out
            self._wake.release()  # the job is in: let the loop's acquire take it


_WORKERS = _Workers()


def _start(fn: Callable[[], T], name: str) -> Outcome[T]:
    call: Outcome[T] = Outcome()
    _WORKERS.run(lambda: call.run(fn), name)
    return call


def call_with_deadline(
    fn: Callable[[], T],
    timeout: float,
    name: str = "qrmi-call",
    *,
    on_late: Callable[[Outcome[T]], None] | None = None,
) -> T:
    """Return ``fn()``, or raise DeadlineExceeded after ``timeout`` seconds.

    ``on_late`` receives the call's outcome once a call that missed its deadline ends (an
    acquire whose session must still be released, a release whose outcome must be
    recorded), in the thread that ran it.
    """
    call = _start(fn, name)
    if not call.wait(timeout):
        call.abandon(on_late)
        raise DeadlineExceeded(f"no answer within {timeout:g}s")
    return call.result()


async def in_thread(fn: Callable[[], T], name: str = "qrmi-call") -> T:
    """Await ``fn()`` run on a worker thread, from an event loop.

    No deadline of its own: ``fn`` carries one (every :class:`QrmiClient` call does). Our
    own threads rather than the loop's default executor, which has a handful of workers on
    a small node and would queue probes behind each other.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def done(call: Outcome[T]) -> None:
        def settle() -> None:
            if fut.cancelled():
                return
            err = call.exception()
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(call.result())

        loop.call_soon_threadsafe(settle)

    call: Outcome[T] = Outcome()
    call._late = done  # set before it runs: its end always reaches the loop
    _WORKERS.run(lambda: call.run(fn), name)
    return await fut
