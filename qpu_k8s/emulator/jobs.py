"""Runs jobs through queued -> running -> completed/failed/cancelled/timed out, off the loop.

Each backend runs one job at a time, like a QPU, so a second job really waits in its queue,
and the queue is bounded (``max_queued_jobs``): a full one refuses new work as the vendor
does. The simulation itself runs in a worker process (``workers.py``), never on the event
loop's process, so the HTTP and admin APIs answer while it runs, a cancel kills it, a job
that exceeds its time limit is killed and reported as such, and shutdown is immediate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .faults import FaultKind, FaultRegistry
from .state import EmulatorState, JobRecord, JobStatus
from .workers import WorkerCrashed, WorkerError, WorkerPool

log = logging.getLogger(__name__)

FinalHook = Callable[[JobRecord], None]

# IBM's reason code for a job cancelled because it ran longer than its time limit
# (qiskit-ibm-runtime turns it into RuntimeJobMaxTimeoutError).
REASON_RAN_TOO_LONG = 1305
# The reason code the emulator gives every other failed job.
REASON_FAILED = 1517


@dataclass(frozen=True)
class Work:
    """What a job runs: ``fn(*args)`` in a worker process, at most ``time_limit`` seconds.

    ``fn`` returns ``(stored_result, report)``: the result the vendor API serves and a small
    JSON-ready dict describing the simulation (method, fidelity...) for the job record.
    """

    fn: Callable[..., tuple[Any, dict[str, Any]]]
    args: tuple[Any, ...]
    time_limit: float | None = None


class JobRunner:
    """Owns the asyncio tasks of live jobs; lives on the server's event loop."""

    def __init__(
        self,
        state: EmulatorState,
        faults: FaultRegistry,
        max_workers: int,
        stopping: asyncio.Event,
        *,
        pool: WorkerPool | None = None,
        max_queued_jobs: int = 0,
    ) -> None:
        self._state = state
        self._faults = faults
        self._workers = asyncio.Semaphore(max_workers)
        self._stopping = stopping
        self._pool = pool or WorkerPool()
        self._max_queued = max_queued_jobs
        self._backend_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._final_hooks: list[FinalHook] = []

    @property
    def pool(self) -> WorkerPool:
        return self._pool

    def on_final(self, hook: FinalHook) -> None:
        """Call ``hook(job)`` whenever a job reaches a final state."""
        self._final_hooks.append(hook)

    def queue_room(self, backend: str) -> int | None:
        """How many more jobs ``backend``'s queue takes (None: unbounded)."""
        if self._max_queued <= 0:
            return None
        queued = sum(1 for j in self._state.jobs(backend=backend) if j.status == JobStatus.QUEUED)
        return max(0, self._max_queued - queued)

    def submit(self, job: JobRecord, work: Work) -> None:
        """Register ``job`` (Queued) and start it."""
        self._state.add_job(job)
        self._state.log(job.id, f"job queued on {job.backend}")
        self._done[job.id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(job.id, job.backend, work))
        self._tasks[job.id] = task

    async def call(self, fn: Callable[..., Any], *args: Any, limit: float | None) -> Any:
        """Run a short helper (e.g. building device specs) in a worker process."""
        outcome = await self._pool.call(fn, *args, limit=limit)
        return outcome.value

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
                try:
                    outcome = await self._pool.call(work.fn, *work.args, limit=work.time_limit)
                except TimeoutError:
                    self._time_out(job_id, work.time_limit or 0.0)
                    return
                stored, report = outcome.value
                self._state.set_result(job_id, stored)
                self._state.update_job(
                    job_id, simulation=report, peak_rss_bytes=outcome.peak_rss_bytes
                )
                self._finish(job_id, JobStatus.COMPLETED, None)
                self._state.log(
                    job_id,
                    f"job completed in {time.monotonic() - started:.3f} s ({_describe(report)})",
                )
        except asyncio.CancelledError:
            rec = self._state.job(job_id)
            if rec is not None and not rec.status.final:  # cancel() already recorded it
                self._finish(job_id, JobStatus.CANCELLED, None)
                self._state.log(job_id, "job cancelled")
            raise
        except WorkerError as exc:
            self._fail(job_id, str(exc), getattr(exc, "peak_rss_bytes", None))
        except WorkerCrashed as exc:
            self._fail(job_id, str(exc), None)
        except Exception as exc:
            self._fail(job_id, f"{type(exc).__name__}: {exc}", None)
        finally:
            self._tasks.pop(job_id, None)

    def _fail(self, job_id: str, message: str, peak_rss: int | None) -> None:
        # INFO, not DEBUG: when a client (qrmi) cannot show the reason, this log line does.
        log.info("job %s failed: %s", job_id, message)
        if peak_rss is not None and self._state.job(job_id) is not None:
            self._state.update_job(job_id, peak_rss_bytes=peak_rss)
        self._finish(job_id, JobStatus.FAILED, message, REASON_FAILED)
        self._state.log(job_id, f"job failed: {message}")

    def _time_out(self, job_id: str, limit: float) -> None:
        message = f"Job ran longer than its maximum execution time ({limit:g} s) and was cancelled"
        log.info("job %s timed out after %g s", job_id, limit)
        self._finish(job_id, JobStatus.TIMED_OUT, message, REASON_RAN_TOO_LONG)
        self._state.log(job_id, message)

    def _finish(
        self, job_id: str, status: JobStatus, error: str | None, reason_code: int | None = None
    ) -> None:
        rec = self._state.job(job_id)
        if rec is None or rec.status.final:
            return
        rec = self._state.update_job(
            job_id, status=status, finished_at=time.time(), error=error, reason_code=reason_code
        )
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
            task.cancel()  # kills its worker process
        # Mark it now, so a status read right after the cancel call already sees it.
        self._finish(job_id, JobStatus.CANCELLED, None)
        self._state.log(job_id, "job cancelled")
        return True

    async def settle(self, job_ids: list[str], seconds: float) -> None:
        """Wait up to ``seconds`` for all ``job_ids`` to reach a final state (or shutdown)."""
        events = [self._done[j] for j in job_ids if j in self._done]
        if not events or seconds <= 0 or self._stopping.is_set():
            return
        # A job held back on purpose (job-delay fault) will not finish within the wait.
        for job_id in job_ids:
            rec = self._state.job(job_id)
            if rec is not None and self._faults.find(FaultKind.JOB_DELAY, rec.backend):
                return

        async def all_done() -> None:
            for event in events:
                await event.wait()

        waiters = [asyncio.ensure_future(all_done()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waiters, return_exceptions=True)

    async def cancel_all(self) -> None:
        """Cancel every live job and kill its worker process."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        self._pool.kill_all()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._done.clear()


def _describe(report: dict[str, Any]) -> str:
    parts = [f"method {', '.join(report.get('methods') or []) or 'n/a'}"]
    if report.get("qubits"):
        parts.append(f"{report['qubits']} qubits")
    if report.get("fidelity") is not None:
        parts.append(f"modelled fidelity {report['fidelity']:.4g}")
    if report.get("ideal_shots") is not None:
        parts.append(f"{report['ideal_shots']} shots from the ideal circuit")
    if report.get("failed_gates"):
        parts.append(
            f"{report['failed_gates']} gates on couplers the calibration reports as failed "
            "(error 1): their shots are noise"
        )
    if report.get("atoms"):
        parts.append(f"{report['atoms']} atoms")
    return ", ".join(parts)
