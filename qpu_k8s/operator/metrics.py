"""The operator's Prometheus metrics (prefix ``qpu_k8s_operator_``), in one place.

Labels are backend names, resource types, operations and outcomes only: never a credential
or a vendor message. Per-backend series are removed when the backend is deleted.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from qpu_k8s.core.metrics import LATENCY_BUCKETS, PREFIX

P = PREFIX + "operator_"

RECONCILES = Counter(
    P + "reconciles_total",
    "Reconciles by trigger (create, update, resume, probe, delete) and result (ok, error).",
    ["trigger", "result"],
)
PROBE_SECONDS = Histogram(
    P + "probe_duration_seconds",
    "Duration of one backend probe (health, target, metadata), by QRMI resource type.",
    ["type"],
    buckets=LATENCY_BUCKETS,
)
PROBES = Counter(
    P + "probes_total",
    "Probes by QRMI resource type and outcome state (online, offline, timeout, auth, ...).",
    ["type", "state"],
)
BACKEND_READY = Gauge(
    P + "backend_ready", "1 while the backend's Ready condition is True.", ["backend"]
)
BACKENDS = Gauge(P + "backends", "QuantumBackends the operator knows.")
PROBES_IN_FLIGHT = Gauge(P + "probes_in_flight", "Probes running now.")
PROBE_LAG = Gauge(
    P + "probe_lag_seconds", "How late the most overdue probe started (scheduler saturation)."
)
API_ERRORS = Counter(P + "api_errors_total", "Failed apiserver calls by operation.", ["operation"])
STATUS_WRITES = Counter(P + "status_writes_total", "Status patches written.")
EVENTS = Counter(P + "events_total", "Events posted, by type.", ["type"])
CONFIGMAP_WRITES = Counter(P + "configmap_writes_total", "Writes of the node agents' ConfigMap.")
CONFIGMAP_BYTES = Gauge(P + "configmap_bytes", "Size of the node agents' config.")
SHARED_CLAIMS = Gauge(P + "shared_claims", "Shared ResourceClaims the operator manages.")
ADMISSION_CHECKS = Counter(
    P + "admission_checks_total",
    "Kueue AdmissionCheck states written on Workloads (Ready, Pending).",
    ["state"],
)
BUDGET_SPENT = Gauge(
    P + "budget_spent",
    "1 while the namespace's QPU budget is spent (requests refused).",
    ["namespace"],
)
BUDGET_USAGE_KNOWN = Gauge(
    P + "budget_usage_known",
    "0 while the namespace's usage records cannot be read (spec.onUsageUnknown applies).",
    ["namespace"],
)
BUDGET_USED_QPU_SECONDS = Gauge(
    P + "budget_used_qpu_seconds", "QPU seconds counted in the current period.", ["namespace"]
)
BUDGET_USED_SESSIONS = Gauge(
    P + "budget_used_sessions", "Sessions counted in the current period.", ["namespace"]
)
SLICE_WRITES = Counter(P + "slice_writes_total", "ResourceSlice writes for shared backends.")


def forget_backend(name: str) -> None:
    with contextlib.suppress(KeyError):
        BACKEND_READY.remove(name)


def forget_budget(namespace: str) -> None:
    for gauge in (BUDGET_SPENT, BUDGET_USAGE_KNOWN, BUDGET_USED_QPU_SECONDS, BUDGET_USED_SESSIONS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace)
