"""The device plugin's usage records: a released acquisition, as the accounting sees it.

The ledger keeps a released acquisition as a tombstone for a while; its holder (the
container PodResources listed with its devices) names the pod. The release runner calls
:func:`report` after each release; :func:`sweep` at start-up covers a crash between the
ledger's release write and the usage journal's. An acquisition never bound to a
container (an Allocate rolled back, a pod that never started) has no workload to account
it to and gets no record.
"""

from __future__ import annotations

import logging

from qpu_k8s.core.usage import Agent
from qpu_k8s.deviceplugin.state import AcqState, Acquisition, Ledger
from qpu_k8s.node.usage import Released, UsageReporter

log = logging.getLogger(__name__)


def released_of(acq: Acquisition) -> Released | None:
    if (
        acq.state is not AcqState.RELEASED
        or acq.holder is None
        or acq.acquired_at is None
        or acq.released_at is None
        or not acq.token
    ):
        return None
    return Released(
        agent=Agent.DEVICE_PLUGIN,
        acquisition_id=acq.id,
        namespace=acq.holder.namespace,
        pod=acq.holder.pod,
        backend=acq.backend,
        token=acq.token,
        acquired_at=acq.acquired_at,
        released_at=acq.released_at,
        reason=acq.release_reason,
    )


def report(ledger: Ledger, reporter: UsageReporter, acq_id: str) -> None:
    acq = ledger.get(acq_id)
    rel = released_of(acq) if acq is not None else None
    if rel is None:
        log.info(
            "no usage record: the acquisition was never held by a container",
            extra={"acquisition": acq_id},
        )
        return
    reporter.released(rel)


def sweep(ledger: Ledger, reporter: UsageReporter) -> int:
    """Record released acquisitions whose usage was not recorded yet; returns how many."""
    count = 0
    for acq in ledger.snapshot():
        rel = released_of(acq)
        if rel is not None and not reporter.knows(acq.id):
            reporter.released(rel)
            count += 1
    return count
