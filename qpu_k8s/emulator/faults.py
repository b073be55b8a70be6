"""Fault switches: the failures a real vendor shows, injectable at runtime.

A fault is global (``backend=None``) or scoped to one backend. The registry is shared
between the server's event-loop thread and the caller's thread (tests, admin API), so
every access takes a lock and reads return copies.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    """What goes wrong."""

    SLOW = "slow"  # every matching request is delayed by ``seconds``
    HANG = "hang"  # matching requests are accepted and never answered until cleared
    ERROR5XX = "error5xx"  # matching requests get ``status`` (default 503)
    REJECT_AUTH = "reject-auth"  # matching requests get 401, token endpoints included
    OFFLINE = "offline"  # the backend reports offline (``paused=True``: paused) with a reason
    JOB_DELAY = "job-delay"  # each job stays Running ``seconds`` longer
    JOB_FAIL = "job-fail"  # each job ends Failed with ``reason``
    # Sessions and jobs carry no usage figures (elapsed_time null, no job ``usage``), as an
    # API that does not report usage for a plan or a system would answer.
    NO_USAGE = "no-usage"


@dataclass(frozen=True)
class Fault:
    """One active fault. ``backend=None`` applies it to every backend and route."""

    kind: FaultKind
    backend: str | None = None
    seconds: float = 0.0
    status: int = 503
    reason: str = ""
    paused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build a fault from admin-API JSON, naming the bad field on error."""
        if not isinstance(data, dict):
            raise ValueError('fault must be a JSON object such as {"kind": "hang"}')
        unknown = set(data) - {"kind", "backend", "seconds", "status", "reason", "paused"}
        if unknown:
            raise ValueError(f"fault has unknown field(s) {sorted(unknown)}")
        try:
            kind = FaultKind(str(data.get("kind")))
        except ValueError:
            valid = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"fault field 'kind' must be one of: {valid}") from None
        backend = data.get("backend")
        if backend is not None and not isinstance(backend, str):
            raise ValueError("fault field 'backend' must be a backend name or null")
        seconds = data.get("seconds", 0.0)
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("fault field 'seconds' must be a number >= 0")
        status = data.get("status", 503)
        if not isinstance(status, int) or not 500 <= status <= 599:
            raise ValueError("fault field 'status' must be an HTTP 5xx code")
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("fault field 'reason' must be a string")
        paused = data.get("paused", False)
        if not isinstance(paused, bool):
            raise ValueError("fault field 'paused' must be true or false")
        return cls(kind, backend, float(seconds), status, reason, paused)


class FaultRegistry:
    """Thread-safe set of active faults, at most one per (kind, backend)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[tuple[FaultKind, str | None], Fault] = {}

    def set(self, fault: Fault) -> None:
        with self._lock:
            self._faults[(fault.kind, fault.backend)] = fault

    def clear(self, kind: FaultKind | None = None, backend: str | None = None) -> int:
        """Remove matching faults (all when both are None); returns how many went."""
        with self._lock:
            doomed = [
                key
                for key in self._faults
                if (kind is None or key[0] == kind) and (backend is None or key[1] == backend)
            ]
            for key in doomed:
                del self._faults[key]
            return len(doomed)

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults.values())

    def find(self, kind: FaultKind, backend: str | None) -> Fault | None:
        """The fault of ``kind`` that applies to ``backend``: its own, else the global one.

        With ``backend=None`` (a request not about one backend) only a global fault applies.
        """
        with self._lock:
            if backend is not None and (kind, backend) in self._faults:
                return self._faults[(kind, backend)]
            return self._faults.get((kind, None))

    def find_scoped(self, kind: FaultKind, backend: str) -> Fault | None:
        """Only the fault scoped to ``backend`` (the global one is checked elsewhere)."""
        with self._lock:
            return self._faults.get((kind, backend))
