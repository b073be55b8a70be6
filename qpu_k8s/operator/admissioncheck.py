"""Kueue AdmissionCheck ``quantum.example.com/backend-online``: a queued Workload starts only
when a QPU that can serve it is Ready.

Kueue (v0.17, ``kueue.x-k8s.io/v1beta2``) reserves quota for a Workload and then waits until
every AdmissionCheck of its ClusterQueue says ``Ready``. For ours, the operator reads which
ResourceFlavor Kueue gave the Workload's ``quantum.example.com/qpu``, the QuantumBackends
that flavor stands for (annotation ``quantum.example.com/backends``, comma-separated), and
their ``Ready`` condition, which the operator itself keeps from its probes:

* one of them Ready: ``Ready``, and Kueue admits (unsuspends) the Job;
* none Ready: ``Pending``, with a message that names each backend and why it is not Ready.
  The quota stays reserved, so the Job keeps its place in line; the check is decided again
  the moment a backend's readiness changes. ``Retry`` would give the quota back and requeue
  with backoff: churn for a pause that lasts minutes, and the Job could lose its turn;
* a flavor without the annotation, or naming no backend that exists: ``Pending`` with the
  fix in the message. Never ``Ready`` on a guess: a misconfigured queue holds its Jobs and
  says why, it does not let them run on a QPU nobody checked;
* the namespace's QPU budget spent (:mod:`.budgets`): ``Pending`` with the budget's own
  message (which says when it resets), decided again when it does.

A Workload that requests no ``quantum.example.com/qpu`` is let through (``Ready``).

Nothing here talks to the API: :class:`AdmissionGate` keeps what the watches showed and
returns the status writes to make; the controller makes them. The writes are server-side
applies of only our entry of ``status.admissionChecks`` (a list keyed by name), with our
own field manager, as Kueue asks of check controllers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qpu_k8s.core.names import API_GROUP, RESOURCE_NAME
from qpu_k8s.core.timestamps import rfc3339
from qpu_k8s.operator.kube import KUEUE_GROUP, KUEUE_VERSION

CONTROLLER_NAME = f"{API_GROUP}/backend-online"
BACKENDS_ANNOTATION = f"{API_GROUP}/backends"
FIELD_MANAGER = "qpu-k8s-backend-online"
READY, PENDING = "Ready", "Pending"

# (ready, why not): a backend's readiness as the operator knows it; None: no such backend.
Readiness = Callable[[str], tuple[bool, str] | None]
# The refusal message while a namespace's QPU budget is spent, else None.
BudgetSpent = Callable[[str], str | None]


@dataclass(frozen=True)
class Verdict:
    state: str
    message: str


@dataclass(frozen=True)
class Write:
    """One status apply: ``kind`` is ``workload`` (namespaced) or ``admissioncheck``."""

    kind: str
    namespace: str
    name: str
    body: dict[str, Any]


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def flavor_backends(flavor: Mapping[str, Any]) -> tuple[str, ...]:
    """The QuantumBackends a ResourceFlavor stands for (its annotation; empty: none named)."""
    raw = str((_meta(flavor).get("annotations") or {}).get(BACKENDS_ANNOTATION, ""))
    return tuple(sorted({b.strip() for b in raw.split(",") if b.strip()}))


def qpu_flavors(workload: Mapping[str, Any]) -> set[str]:
    """The flavors Kueue assigned to ``quantum.example.com/qpu`` in the quota reservation."""
    admission = (workload.get("status") or {}).get("admission") or {}
    out: set[str] = set()
    for ps in admission.get("podSetAssignments") or []:
        flavor = (ps.get("flavors") or {}).get(RESOURCE_NAME)
        if flavor:
            out.add(str(flavor))
    return out


def our_pending_checks(workload: Mapping[str, Any], ours: Iterable[str]) -> list[str]:
    """Names of our checks this Workload waits on: quota reserved and the check not decided
    yet (``Pending``). A check we set ``Ready`` is left alone: Kueue admits, and a QPU that
    goes down later is the node agents' and the scheduler's business, not the queue's."""
    status = workload.get("status") or {}
    if not status.get("admission"):
        return []
    names = set(ours)
    return [
        str(c["name"])
        for c in status.get("admissionChecks") or []
        if c.get("name") in names and c.get("state") == PENDING
    ]


def decide(
    flavors: set[str], backends_of: Mapping[str, tuple[str, ...]], readiness: Readiness
) -> Verdict:
    """Ready when, for every QPU flavor assigned, one of its backends is Ready."""
    if not flavors:
        return Verdict(READY, f"the workload requests no {RESOURCE_NAME}")
    waiting: list[str] = []
    online: list[str] = []
    for flavor in sorted(flavors):
        names = backends_of.get(flavor, ())
        if not names:
            waiting.append(
                f"ResourceFlavor {flavor} names no QuantumBackend: annotate it with "
                f"{BACKENDS_ANNOTATION}=<backend>[,<backend>...]"
            )
            continue
        why: list[str] = []
        ready = ""
        for name in names:
            seen = readiness(name)
            if seen is None:
                why.append(f"QuantumBackend {name} does not exist")
            elif seen[0]:
                ready = name
                break
            else:
                why.append(f"QuantumBackend {name} is not Ready ({seen[1]})")
        if ready:
            online.append(f"{ready} (flavor {flavor})")
        else:
            waiting.append(f"flavor {flavor}: " + "; ".join(why))
    if waiting:
        return Verdict(
            PENDING,
            "waiting for a QPU to be online: " + " | ".join(waiting) + "; checked again "
            "when a backend changes",
        )
    return Verdict(READY, "QPU online: " + ", ".join(online))


def workload_apply(workload: Mapping[str, Any], check: str, verdict: Verdict) -> Write:
    """Our entry of ``status.admissionChecks``; its transition time moves with the state only."""
    meta = _meta(workload)
    state, _, since = _current(workload, check)
    if state != verdict.state or not since:
        since = rfc3339()
    body = {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": "Workload",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "status": {
            "admissionChecks": [
                {
                    "name": check,
                    "state": verdict.state,
                    "message": verdict.message,
                    "lastTransitionTime": since,
                }
            ]
        },
    }
    return Write("workload", str(meta["namespace"]), str(meta["name"]), body)


def check_active_apply(check: Mapping[str, Any]) -> Write:
    """Kueue treats a ClusterQueue whose check is not ``Active`` as inactive: say we serve it."""
    meta = _meta(check)
    body = {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": "AdmissionCheck",
        "metadata": {"name": meta["name"]},
        "status": {
            "conditions": [
                {
                    "type": "Active",
                    "status": "True",
                    "reason": "Active",
                    "message": "the qpu-k8s operator decides this check from QuantumBackend "
                    "readiness",
                    "lastTransitionTime": rfc3339(),
                    "observedGeneration": int(meta.get("generation") or 0),
                }
            ]
        },
    }
    return Write("admissioncheck", "", str(meta["name"]), body)


def _is_active(check: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Active"
        and c.get("status") == "True"
        and c.get("observedGeneration") == _meta(check).get("generation")
        for c in (check.get("status") or {}).get("conditions") or []
    )


def _current(workload: Mapping[str, Any], check: str) -> tuple[str, str, str]:
    """(state, message, lastTransitionTime) of ``check`` on the Workload."""
    for c in (workload.get("status") or {}).get("admissionChecks") or []:
        if c.get("name") == check:
            return (
                str(c.get("state", "")),
                str(c.get("message", "")),
                str(c.get("lastTransitionTime", "")),
            )
    return "", "", ""


class AdmissionGate:
    """What the watches showed of Kueue's objects, and the writes they call for."""

    def __init__(self, readiness: Readiness, budget_spent: BudgetSpent = lambda ns: None) -> None:
        self.readiness = readiness
        self.budget_spent = budget_spent
        self.checks: set[str] = set()
        self.flavors: dict[str, tuple[str, ...]] = {}
        # Workloads waiting on one of our checks, by (namespace, name): the last body seen.
        self.waiting: dict[tuple[str, str], dict[str, Any]] = {}

    def check_event(self, body: Mapping[str, Any], event_type: str | None) -> list[Write]:
        name = str(_meta(body).get("name"))
        mine = (body.get("spec") or {}).get("controllerName") == CONTROLLER_NAME
        if event_type == "DELETED" or not mine:
            self.checks.discard(name)
            return []
        new = name not in self.checks
        self.checks.add(name)
        writes = [] if _is_active(body) else [check_active_apply(body)]
        return writes + (self.reevaluate() if new else [])

    def flavor_event(self, body: Mapping[str, Any], event_type: str | None) -> list[Write]:
        name = str(_meta(body).get("name"))
        old = self.flavors.get(name, ())
        if event_type == "DELETED":
            self.flavors.pop(name, None)
        else:
            self.flavors[name] = flavor_backends(body)
        return self.reevaluate() if self.flavors.get(name, ()) != old else []

    def workload_event(self, body: Mapping[str, Any], event_type: str | None) -> list[Write]:
        meta = _meta(body)
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED" or not our_pending_checks(body, self.checks):
            self.waiting.pop(key, None)
            return []
        self.waiting[key] = dict(body)
        return self._evaluate(body)

    def reevaluate(self) -> list[Write]:
        """Decide every waiting Workload again (a backend, flavor or check changed)."""
        return [w for body in list(self.waiting.values()) for w in self._evaluate(body)]

    def _evaluate(self, body: Mapping[str, Any]) -> list[Write]:
        meta = _meta(body)
        key = (str(meta.get("namespace")), str(meta.get("name")))
        flavors = qpu_flavors(body)
        verdict = decide(flavors, self.flavors, self.readiness)
        spent = self.budget_spent(key[0]) if flavors else None
        if spent and verdict.state == READY:
            verdict = Verdict(PENDING, f"{spent}; checked again when it resets")
        writes = []
        for check in our_pending_checks(body, self.checks):
            if _current(body, check)[:2] != (verdict.state, verdict.message):
                w = workload_apply(body, check, verdict)
                writes.append(w)
                if key in self.waiting:  # what we wrote is what the next event will show
                    self.waiting[key] = _with_check(self.waiting[key], w)
        if verdict.state == READY:
            self.waiting.pop(key, None)
        return writes


def _with_check(body: Mapping[str, Any], w: Write) -> dict[str, Any]:
    """``body`` with our entry of ``status.admissionChecks`` replaced by the one in ``w``."""
    (entry,) = w.body["status"]["admissionChecks"]
    status = dict(body.get("status") or {})
    status["admissionChecks"] = [
        entry if c.get("name") == entry["name"] else c for c in status.get("admissionChecks") or []
    ]
    return {**body, "status": status}
