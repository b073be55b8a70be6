"""The DRA driver's usage records: a claim's device, released, as the accounting sees it.

The preparer tells a :class:`UsageSink` three things: a claim it prepares (whose
``status.reservedFor`` names the pods it is for: by unprepare the pods are gone and the
list may be empty), each device it has released at unprepare, and the claim's end. The
record names the claim and the first pod it was reserved for (a claim from a pod's
template has exactly one).

Not recorded (yet): sessions released by the release runner after a claim was given up
(a node reboot, a failed prepare): those claims' pods never ran on the QPU, or not
knowingly; the vendor bills them, and the agents' release metrics count them.
"""

from __future__ import annotations

import time
from typing import Any

from qpu_k8s.core.usage import Agent
from qpu_k8s.dra.state import ClaimRecord, DeviceRecord
from qpu_k8s.node.usage import Released, UsageReporter


def reserved_pods(claim: dict[str, Any]) -> list[str]:
    return [
        str(r.get("name"))
        for r in (claim.get("status") or {}).get("reservedFor") or []
        if r.get("resource") == "pods" and r.get("name")
    ]


class UsageSink:
    """The preparer's side of the usage records, over the agent's reporter."""

    def __init__(self, reporter: UsageReporter) -> None:
        self.reporter = reporter

    def claim_prepared(self, uid: str, claim: dict[str, Any]) -> None:
        pods = reserved_pods(claim)
        if pods:
            self.reporter.note_consumers(uid, pods)

    def device_released(self, rec: ClaimRecord, dev: DeviceRecord) -> None:
        if not dev.token or dev.acquired_at is None:
            return
        self.reporter.released(
            Released(
                agent=Agent.DRA,
                acquisition_id=f"{rec.uid}-{dev.device}",
                namespace=rec.namespace,
                claim=rec.name,
                claim_uid=rec.uid,
                backend=dev.backend,
                token=dev.token,
                acquired_at=dev.acquired_at,
                released_at=time.time(),
                reason="claim unprepared",
            )
        )

    def claim_done(self, uid: str) -> None:
        self.reporter.forget_consumers(uid)
