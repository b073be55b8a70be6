"""Conditions: setting them without losing transition times, and the Events their changes make.

A condition keeps its ``lastTransitionTime`` while its status stays the same, so ``kubectl
describe`` shows since when a backend has been down, not when it was last probed. An Event is
due whenever a condition's status or reason changes: that is what an admin wants paged on,
not every probe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from qpu_k8s.core.timestamps import rfc3339
from qpu_k8s.operator.status import Condition, ConditionStatus, ConditionType

ORDER = (ConditionType.READY, ConditionType.ACCESSIBLE, ConditionType.DEGRADED)


@dataclass(frozen=True)
class Want:
    """A condition as the reconciler wants it, before transition times are applied."""

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""


def merge(
    previous: Sequence[Condition], wanted: Iterable[Want], now: datetime, generation: int | None
) -> list[Condition]:
    """The new condition list: ``wanted`` replaces same-typed entries, order is fixed."""
    old = {c.type: c for c in previous}
    new = dict(old)
    for w in wanted:
        prev = old.get(w.type)
        since = (
            prev.last_transition_time
            if prev is not None and prev.status == w.status
            else rfc3339(now)
        )
        new[w.type] = Condition(
            type=w.type,
            status=w.status,
            reason=w.reason,
            message=w.message[:2000],
            last_transition_time=since,
            observed_generation=generation,
        )
    return [new[t] for t in ORDER if t in new]


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to post about a QuantumBackend."""

    type: str  # Normal | Warning
    reason: str
    message: str


def _bad(c: Condition) -> bool:
    if c.type == ConditionType.DEGRADED:
        return c.status == ConditionStatus.TRUE
    return c.status != ConditionStatus.TRUE


def transitions(previous: Sequence[Condition], current: Sequence[Condition]) -> list[EventSpec]:
    """Events for every condition whose (status, reason) changed, Ready first."""
    old = {c.type: c for c in previous}
    out = []
    for c in current:
        p = old.get(c.type)
        if p is not None and (p.status, p.reason) == (c.status, c.reason):
            continue
        if p is None and not _bad(c) and c.type != ConditionType.READY:
            continue  # a fresh backend that is fine needs one "Ready" event, not three
        was = f" (was {p.status.value}/{p.reason})" if p is not None else ""
        out.append(
            EventSpec(
                type="Warning" if _bad(c) else "Normal",
                reason=c.reason,
                message=f"{c.type.value}={c.status.value}{was}: {c.message}"[:1024],
            )
        )
    return out
