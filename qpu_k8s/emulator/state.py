"""What the emulator holds: sessions (the acquisitions), jobs, Pasqal batches, a request log.

The server's event loop writes it and tests read it from their own thread, so records are
frozen dataclasses replaced under one lock; a reader always gets a consistent snapshot.
``wait_until`` lets a test wait for a condition with a deadline instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

REQUEST_LOG_SIZE = 5000


class SessionState(StrEnum):
    OPEN = "open"
    ACTIVE = "active"
    INACTIVE = "inactive"
    CLOSED = "closed"


class JobStatus(StrEnum):
    """Vendor-neutral job states; ``ibm_status``/``pasqal_status`` give the wire names."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Killed for running longer than its time limit (IBM: "Cancelled - Ran too long").
    TIMED_OUT = "timed-out"

    @property
    def final(self) -> bool:
        return self in (
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.TIMED_OUT,
        )

    @property
    def ibm_status(self) -> str:
        return _IBM_STATUS[self]

    @property
    def pasqal_status(self) -> str:
        return _PASQAL_STATUS[self]


_IBM_STATUS = {
    JobStatus.QUEUED: "Queued",
    JobStatus.RUNNING: "Running",
    JobStatus.COMPLETED: "Completed",
    JobStatus.FAILED: "Failed",
    JobStatus.CANCELLED: "Cancelled",
    JobStatus.TIMED_OUT: "Cancelled - Ran too long",
}
_PASQAL_STATUS = {
    JobStatus.QUEUED: "PENDING",
    JobStatus.RUNNING: "RUNNING",
    JobStatus.COMPLETED: "DONE",
    JobStatus.FAILED: "ERROR",
    JobStatus.CANCELLED: "CANCELED",
    # Pasqal Cloud has TIMED_OUT, but qrmi 0.26 cannot parse it (a serde error on every
    # status call): ERROR, with the reason in the job's ``errors``, keeps qrmi working.
    JobStatus.TIMED_OUT: "ERROR",
}


@dataclass(frozen=True)
class SessionRecord:
    """An IBM Runtime session: what ``acquire`` opens and ``release`` closes."""

    id: str
    backend: str
    mode: str
    max_ttl: int
    created_at: float
    state: SessionState = SessionState.OPEN
    accepting_jobs: bool = True
    closed_at: float | None = None
    # "release" (PATCH accepting_jobs=false), "cancel" (DELETE .../close), "expired"
    closed_by: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state != SessionState.CLOSED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobRecord:
    """One job: an IBM primitive job or one job of a Pasqal batch."""

    id: str
    vendor: str
    backend: str
    program: str
    created_at: float
    status: JobStatus = JobStatus.QUEUED
    session_id: str | None = None
    batch_id: str | None = None
    shots: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    # The vendor's reason code for ``error`` (IBM: 1305 ran too long, 1517 failed).
    reason_code: int | None = None
    # How the job was simulated: method(s), qubits, modelled fidelity (see sim_qiskit).
    simulation: dict[str, Any] | None = None
    # Peak resident memory of the worker process that ran it.
    peak_rss_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchRecord:
    """A Pasqal batch: a sequence and its jobs on one device type."""

    id: str
    device_type: str
    project_id: str
    created_at: float
    job_ids: tuple[str, ...] = ()
    open: bool = False
    cancelled: bool = False
    sequence: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["sequence"]  # large; served by GET batch, not by the admin snapshot
        return data


@dataclass(frozen=True)
class RequestRecord:
    """One served request: method, route path (no query string, no headers), status."""

    method: str
    path: str
    status: int
    seconds: float
    backend: str | None = None


@dataclass
class _Store:
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    batches: dict[str, BatchRecord] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)
    requests: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))


class EmulatorState:
    """Thread-safe store of everything the emulator knows; readable from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._s = _Store()

    # ---- waiting -------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[EmulatorState], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` is true or ``timeout`` seconds pass; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:  # re-entrant: the predicate's getters take the same lock
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _changed(self) -> None:
        self._cond.notify_all()

    # ---- sessions ------------------------------------------------------------------------
    def add_session(self, rec: SessionRecord) -> None:
        with self._cond:
            self._s.sessions[rec.id] = rec
            self._changed()

    def session(self, session_id: str) -> SessionRecord | None:
        with self._cond:
            return self._s.sessions.get(session_id)

    def update_session(self, session_id: str, **changes: Any) -> SessionRecord:
        with self._cond:
            rec = replace(self._s.sessions[session_id], **changes)
            self._s.sessions[session_id] = rec
            self._changed()
            return rec

    def sessions(self, backend: str | None = None, open_only: bool = False) -> list[SessionRecord]:
        with self._cond:
            return [
                s
                for s in self._s.sessions.values()
                if (backend is None or s.backend == backend) and (not open_only or s.is_open)
            ]

    def open_sessions(self, backend: str | None = None) -> list[SessionRecord]:
        return self.sessions(backend, open_only=True)

    def session_counts(self) -> dict[str, dict[str, int]]:
        """Per backend: how many sessions are open and how many closed."""
        counts: dict[str, dict[str, int]] = {}
        for s in self.sessions():
            entry = counts.setdefault(s.backend, {"open": 0, "closed": 0})
            entry["open" if s.is_open else "closed"] += 1
        return counts

    # ---- jobs ----------------------------------------------------------------------------
    def add_job(self, rec: JobRecord) -> None:
        with self._cond:
            self._s.jobs[rec.id] = rec
            self._s.logs.setdefault(rec.id, [])
            self._changed()

    def job(self, job_id: str) -> JobRecord | None:
        with self._cond:
            return self._s.jobs.get(job_id)

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        with self._cond:
            rec = replace(self._s.jobs[job_id], **changes)
            self._s.jobs[job_id] = rec
            self._changed()
            return rec

    def jobs(
        self,
        vendor: str | None = None,
        backend: str | None = None,
        session_id: str | None = None,
        pending: bool | None = None,
    ) -> list[JobRecord]:
        with self._cond:
            return [
                j
                for j in self._s.jobs.values()
                if (vendor is None or j.vendor == vendor)
                and (backend is None or j.backend == backend)
                and (session_id is None or j.session_id == session_id)
                and (pending is None or pending != j.status.final)
            ]

    def set_result(self, job_id: str, result: Any) -> None:
        with self._cond:
            self._s.results[job_id] = result
            self._changed()

    def result(self, job_id: str) -> Any:
        with self._cond:
            return self._s.results.get(job_id)

    def log(self, job_id: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._cond:
            self._s.logs.setdefault(job_id, []).append(f"{stamp} {message}")

    def job_logs(self, job_id: str) -> list[str]:
        with self._cond:
            return list(self._s.logs.get(job_id, []))

    # ---- Pasqal batches ------------------------------------------------------------------
    def add_batch(self, rec: BatchRecord) -> None:
        with self._cond:
            self._s.batches[rec.id] = rec
            self._changed()

    def batch(self, batch_id: str) -> BatchRecord | None:
        with self._cond:
            return self._s.batches.get(batch_id)

    def update_batch(self, batch_id: str, **changes: Any) -> BatchRecord:
        with self._cond:
            rec = replace(self._s.batches[batch_id], **changes)
            self._s.batches[batch_id] = rec
            self._changed()
            return rec

    def batches(self) -> list[BatchRecord]:
        with self._cond:
            return list(self._s.batches.values())

    # ---- request log ---------------------------------------------------------------------
    def record_request(self, rec: RequestRecord) -> None:
        with self._cond:
            self._s.requests.append(rec)
            self._changed()

    def requests(self, path_contains: str | None = None) -> list[RequestRecord]:
        with self._cond:
            return [r for r in self._s.requests if path_contains is None or path_contains in r.path]

    # ---- whole state ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every session, job, batch and logged request."""
        with self._cond:
            self._s = _Store()
            self._changed()

    def snapshot(self) -> dict[str, Any]:
        """Everything as JSON-ready data (what the admin API serves)."""
        with self._cond:
            sessions = [s.to_dict() for s in self._s.sessions.values()]
            jobs = [j.to_dict() for j in self._s.jobs.values()]
            batches = [b.to_dict() for b in self._s.batches.values()]
        return {
            "sessions": sessions,
            "session_counts": self.session_counts(),
            "jobs": jobs,
            "batches": batches,
        }
