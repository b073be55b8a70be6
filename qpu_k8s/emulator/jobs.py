"""Runs jobs through queued -> running -> completed/failed/cancelled, off the event loop.

Each backend runs one job at a time, like a QPU, so a second job really waits in the queue.
Simulations run on long-lived daemon worker threads: a runaway simulation can neither block
the event loop nor keep the interpreter from exiting when the emulator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .faults import FaultKind, FaultRegistry
from .state import EmulatorState, JobRecord, JobStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

Work = Callable[[], Any]
FinalHook = Callable[[JobRecord], None]


class _WorkerPool:
    """Long-lived daemon threads that run the blocking work (simulations, pulser imports).

    Long-lived on purpose: qiskit-aer and friends crash the process (SIGSEGV) when the
    thread that first imported them has exited, which measured true for one short-lived
    thread per job. Daemons, so a runaway simulation cannot keep the interpreter alive.
    The pool is process-wide and never shrinks: a stopped emulator leaves its threads to
    the next one.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._size = 0

    def ensure(self, size: int) -> None:
        with self._lock:
            while self._size < size:
                self._size += 1
                threading.Thread(
                    target=self._serve, name=f"emulator-worker-{self._size}", daemon=True
                ).start()

    def _serve(self) -> None:
        while True:
            self._queue.get()()

    def submit(self, task: Callable[[], None]) -> None:
        self._queue.put(task)


_POOL = _WorkerPool()
POOL_THREADS = 4


async def run_blocking(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` on the emulator's worker threads and await its result."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def task() -> None:
        if fut.cancelled():
            return
        payload: Any
        try:
            value = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            ok, payload = False, exc
        else:
            ok, payload = True, value
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(deliver, ok, payload)

    _POOL.ensure(POOL_THREADS)
    _POOL.submit(task)
    return await fut


class JobRunner:
    """Owns the asyncio tasks of live jobs; lives on the server's event loop."""

    def __init__(
        self,
        state: EmulatorState,
        faults: FaultRegistry,
        max_workers: int,
        stopping: asyncio.Event,
    ) -> None:
        self._state = state
        self._faults = faults
        self._workers = asyncio.Semaphore(max_workers)
        self._stopping = stopping
        self._backend_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._final_hooks: list[FinalHook] = []

    def on_final(self, hook: FinalHook) -> None:
        """Call ``hook(job)`` whenever a job reaches a final state."""
        self._final_hooks.append(hook)

    def submit(self, job: JobRecord, work: Work) -> None:
        """Register ``job`` (Queued) and start it; ``work()`` returns the stored result."""
        self._state.add_job(job)
        self._state.log(job.id, f"job queued on {job.backend}")
        self._done[job.id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(job.id, job.backend, work))
        self._tasks[job.id] = task

    async def _run(self, job_id: str, backend: str, work: Work) -> None:
        lock = self._backend_locks.setdefault(backend, asyncio.Lock())
        try:
            async with lock, self._workers:
                rec = self._state.job(job_id)
                if rec is None or rec.status.final:
                    return
                self._state.update_job(job_id, status=JobStatus.RUNNING, started_at=time.time())
                self._state.log(job_id, "job running")
                fail = self._faults.find(FaultKind.JOB_FAIL, backend)
                if fail is not None:
                    raise RuntimeError(fail.reason or "job failed (injected fault)")
                delay = self._faults.find(FaultKind.JOB_DELAY, backend)
                if delay is not None and delay.seconds > 0:
                    await asyncio.sleep(delay.seconds)
                started = time.monotonic()
                result = await run_blocking(work)
                self._state.set_result(job_id, result)
                self._finish(job_id, JobStatus.COMPLETED, None)
                self._state.log(job_id, f"job completed in {time.monotonic() - started:.3f} s")
        except asyncio.CancelledError:
            self._finish(job_id, JobStatus.CANCELLED, None)
            self._state.log(job_id, "job cancelled")
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.debug("job %s failed: %s", job_id, message)
            self._finish(job_id, JobStatus.FAILED, message)
            self._state.log(job_id, f"job failed: {message}")
        finally:
            self._tasks.pop(job_id, None)

    def _finish(self, job_id: str, status: JobStatus, error: str | None) -> None:
        rec = self._state.job(job_id)
        if rec is None or rec.status.final:
            return
        rec = self._state.update_job(job_id, status=status, finished_at=time.time(), error=error)
        event = self._done.get(job_id)
        if event is not None:
            event.set()
        for hook in self._final_hooks:
            try:
                hook(rec)
            except Exception:
                log.exception("final-state hook failed for job %s", job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had already finished."""
        rec = self._state.job(job_id)
        if rec is None or rec.status.final:
            return False
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        # Mark it now, so a status read right after the cancel call already sees it.
        self._finish(job_id, JobStatus.CANCELLED, None)
        return True

    async def settle(self, job_ids: list[str], seconds: float) -> None:
        """Wait up to ``seconds`` for all ``job_ids`` to reach a final state."""
        events = [self._done[j] for j in job_ids if j in self._done]
        if not events or seconds <= 0:
            return
        # A job held back on purpose (job-delay fault) will not finish within the wait.
        for job_id in job_ids:
            rec = self._state.job(job_id)
            if rec is not None and self._faults.find(FaultKind.JOB_DELAY, rec.backend):
                return

        async def all_done() -> None:
            for event in events:
                await event.wait()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done(), seconds)

    async def cancel_all(self) -> None:
        """Cancel every live job (their threads are daemons and may finish unobserved)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._done.clear()
