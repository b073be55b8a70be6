"""A QRMI client whose vendor answers at once, for benchmarks of an agent's own cost.

Benchmarks compare an agent's Allocate / NodePrepareResources against a bare gRPC call; the
vendor's own latency is measured separately, so this client takes it out of the picture.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.qrmi_client import Health, LateAcquire, LateRelease, TaskState


class InstantClient:
    """:class:`~qpu_k8s.core.qrmi_client.QuantumResourceClient` with no vendor behind it."""

    def __init__(self, backend: QuantumBackend, creds: Mapping[str, str] | None = None) -> None:
        self.backend = backend

    def acquire(self, *, on_late: LateAcquire | None = None) -> str:
        return uuid.uuid4().hex[:20]

    def release(self, token: str, *, on_late: LateRelease | None = None) -> None:
        return None

    def health(self) -> Health:
        return Health(True, "online")

    def target(self) -> dict[str, Any]:
        return {}

    def metadata(self) -> dict[str, str]:
        return {}

    def task_start(self, payload: Any, token: str | None = None) -> str:
        raise NotImplementedError("InstantClient runs no tasks")

    def task_status(self, task_id: str, token: str | None = None) -> TaskState:
        raise NotImplementedError("InstantClient runs no tasks")

    def task_result(self, task_id: str, token: str | None = None) -> str:
        raise NotImplementedError("InstantClient runs no tasks")

    def task_stop(self, task_id: str, token: str | None = None) -> None:
        raise NotImplementedError("InstantClient runs no tasks")
