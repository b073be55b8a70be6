"""Pure reconcile logic: what the operator observed → the QuantumBackend's status.

No I/O here: the caller validates the spec, reads the Secret and probes the vendor, and
hands the outcome to :func:`compute_status`. Every reason is a stable CamelCase word an
admin can search for, and every message says what to do next. Messages are built from
names and redacted vendor text only, never from credential values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from qpu_k8s.core.credentials import redact
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.core.timestamps import rfc3339
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.core.vendors import profile
from qpu_k8s.operator.conditions import Want, merge
from qpu_k8s.operator.status import BackendStatus, ConditionStatus, ConditionType
from qpu_k8s.resourceslices.attributes import InvalidAttributesError, device_attributes

T, F, U = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN
READY, ACCESSIBLE, DEGRADED = ConditionType.READY, ConditionType.ACCESSIBLE, ConditionType.DEGRADED


class SecretReason(StrEnum):
    """Why the credentials could not be used, before any vendor call."""

    NOT_FOUND = "SecretNotFound"
    FORBIDDEN = "SecretForbidden"
    INCOMPLETE = "SecretIncomplete"
    UNREADABLE = "SecretUnreadable"


class SecretProblem(Exception):
    """The referenced Secret is missing, unreadable or lacks keys. Never carries a value."""

    def __init__(self, reason: SecretReason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason.value}: {message}")


@dataclass(frozen=True)
class ProbeResult:
    """One probe: health always; target() when it was due and the backend answered online."""

    health: Health
    target: Mapping[str, Any] | None = None
    target_error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Observation:
    """Everything the reconciler needs about one backend at one moment."""

    generation: int | None
    now: datetime
    backend: QuantumBackend | None = None
    spec_problems: tuple[tuple[str, str], ...] = ()
    secret_problem: SecretProblem | None = None
    probe: ProbeResult | None = None
    live_acquisitions: int = 0
    shared_claims: int = 0
    publish_problems: tuple[str, ...] = field(default_factory=tuple)


def _spec_message(problems: tuple[tuple[str, str], ...]) -> str:
    shown = "; ".join(f"{path}: {msg}" for path, msg in problems[:5])
    more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
    return f"the spec is invalid: {shown}{more}. Fix the QuantumBackend and apply it again"


def _endpoint(backend: QuantumBackend) -> str:
    cfg = backend.spec.config
    for key in sorted(cfg):
        if key.endswith(("_ENDPOINT", "_BASE_URL", "_URL")) and "IAM" not in key:
            return f" at {cfg[key]}"
    return ""


def _probe_wants(backend: QuantumBackend, probe: ProbeResult) -> list[Want]:
    h = probe.health
    rid = backend.spec.resource_id
    where = _endpoint(backend)
    vendor_says = f": {redact(h.reason)}" if h.reason else ""
    if h.status == "online":
        pending = f"; {h.pending_jobs} job(s) queued" if h.pending_jobs is not None else ""
        return [
            Want(ACCESSIBLE, T, "VendorReachable", f"{rid}{where} answered the health probe"),
            Want(READY, T, "Online", f"{rid} is online{pending}"),
        ]
    if h.status in ("offline", "paused"):
        reason = "BackendOffline" if h.status == "offline" else "BackendPaused"
        return [
            Want(ACCESSIBLE, T, "VendorReachable", f"{rid}{where} answered the health probe"),
            Want(
                READY,
                F,
                reason,
                f"the vendor reports {rid} {h.status}{vendor_says}. Pods cannot get it until "
                "the vendor brings it back; nothing to fix on this side",
            ),
        ]
    if h.status == "timeout":
        msg = (
            f"{rid}{where} did not answer within the probe deadline{vendor_says}. The vendor "
            "may be hanging or slow, or the endpoint may be wrong; probing continues"
        )
        return [Want(ACCESSIBLE, F, "ProbeTimeout", msg), Want(READY, F, "ProbeTimeout", msg)]
    if h.status == "auth":
        ref = backend.spec.credentials_secret_ref
        secret = f"Secret {ref.name!r}" if ref else "the credentials"
        msg = (
            f"the vendor rejected the credentials from {secret}{vendor_says}. Check or "
            "rotate the API key/token in the Secret; the operator re-reads it on the next probe"
        )
        return [
            Want(ACCESSIBLE, F, "AuthenticationFailed", msg),
            Want(READY, F, "AuthenticationFailed", msg),
        ]
    if h.status == "unreachable":
        msg = (
            f"{rid}{where} could not be reached{vendor_says}. Check the endpoint in "
            "spec.config and the network path to the vendor"
        )
        return [
            Want(ACCESSIBLE, F, "VendorUnreachable", msg),
            Want(READY, F, "VendorUnreachable", msg),
        ]
    msg = f"the health probe of {rid} failed ({h.status}){vendor_says}"
    return [Want(ACCESSIBLE, F, "ProbeFailed", msg), Want(READY, F, "ProbeFailed", msg)]


def _attributes(
    backend: QuantumBackend, probe: ProbeResult | None, previous: BackendStatus
) -> tuple[dict[str, AttributeValue], str | None]:
    """Lane-independent device attributes: fresh from target() when we have it."""
    fresh = probe is not None and probe.target is not None
    try:
        attrs = device_attributes(backend, 0, probe.target if fresh and probe else None)
    except InvalidAttributesError as err:
        return dict(previous.attributes), str(err)
    attrs.pop("lane", None)
    if not fresh and previous.attributes:
        # Keep the last known quality figures, but let spec changes through.
        merged = dict(previous.attributes)
        merged.update({k: v for k, v in attrs.items() if k not in merged or k in _SPEC_KEYS})
        merged.update(backend.spec.attributes)
        return merged, None
    return attrs, None


_SPEC_KEYS = frozenset({"backend", "resourceId", "resourceType", "vendor"})


def compute_status(obs: Observation, previous: BackendStatus) -> BackendStatus:
    """The status to write for ``obs``; conditions keep their transition times."""
    wants: list[Want]
    degraded: Want = Want(DEGRADED, F, "AsExpected", "")
    state: str | None
    if previous.observed_generation != obs.generation:
        # Figures of an older spec (maybe another resourceId) must not leak into this one.
        previous = previous.model_copy(update={"attributes": {}, "last_target_time": None})
    attrs = dict(previous.attributes)
    backend = obs.backend
    probe = obs.probe
    last_probe = previous.last_probe_time
    last_target = previous.last_target_time
    latency = previous.probe_latency_ms
    pending = previous.pending_jobs

    if backend is None or obs.spec_problems:
        msg = _spec_message(obs.spec_problems or (("spec", "missing"),))
        wants = [Want(READY, F, "InvalidSpec", msg), Want(ACCESSIBLE, U, "InvalidSpec", msg)]
        state = "invalid-spec"
    elif obs.secret_problem is not None:
        p = obs.secret_problem
        wants = [
            Want(ACCESSIBLE, F, p.reason.value, p.message),
            Want(READY, F, p.reason.value, p.message),
        ]
        state = "no-credentials"
    elif probe is None:
        wants = [
            Want(READY, U, "Probing", "waiting for the first health probe"),
            Want(ACCESSIBLE, U, "Probing", "waiting for the first health probe"),
        ]
        state = previous.state
    else:
        wants = _probe_wants(backend, probe)
        state = probe.health.status
        last_probe = rfc3339(obs.now)
        if probe.target is not None:
            last_target = last_probe
        latency = round(probe.seconds * 1000)
        pending = probe.health.pending_jobs
        if probe.health.healthy and probe.target_error:
            degraded = Want(
                DEGRADED,
                T,
                "TargetUnavailable",
                f"online, but target() failed ({redact(probe.target_error)}): qubits and "
                "quality figures are from the last successful probe",
            )
    if backend is not None:
        attrs, attr_error = _attributes(backend, probe, previous)
        if attr_error:
            degraded = Want(DEGRADED, T, "InvalidAttributes", attr_error)
    if obs.publish_problems and degraded.status != T:
        degraded = Want(
            DEGRADED, T, "PublishFailed", "; ".join(obs.publish_problems) + " (retrying)"
        )
    t = profile(backend.spec.type) if backend is not None else None
    if t is not None and t.deprecated and degraded.status != T:
        degraded = Want(DEGRADED, T, "DeprecatedType", t.deprecated)
    wants.append(degraded)
    qubits = attrs.get("qubits")
    tech = attrs.get("technology")
    return BackendStatus(
        observed_generation=obs.generation,
        conditions=merge(previous.conditions, wants, obs.now, obs.generation),
        state=state,
        qubits=qubits if isinstance(qubits, int) and not isinstance(qubits, bool) else None,
        technology=tech if isinstance(tech, str) else (t.technology if t else None),
        vendor=t.vendor if t else previous.vendor,
        pending_jobs=pending if pending is None or pending >= 0 else None,
        last_probe_time=last_probe,
        last_target_time=last_target,
        probe_latency_ms=latency,
        attributes=attrs,
        live_acquisitions=obs.live_acquisitions,
        shared_claims=obs.shared_claims,
    )


def is_ready(status: BackendStatus) -> bool:
    c = status.condition(READY)
    return c is not None and c.status == T
