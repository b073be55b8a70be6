"""Prometheus metrics of the device plugin (prefix ``qpu_k8s_deviceplugin_``).

Vendor-call latency and errors by kind come from the shared adapter metrics
(``qpu_k8s_vendor_call_duration_seconds``, ``qpu_k8s_vendor_errors_total``); these add what
only the device plugin knows. Labels hold backend names, device IDs and outcomes, never a
token or credential.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from qpu_k8s.core.metrics import LATENCY_BUCKETS, PREFIX
from qpu_k8s.node.losses import LossReporter
from qpu_k8s.node.releases import ReleaseMetrics

P = PREFIX + "deviceplugin_"

ALLOCATIONS = Counter(
    P + "allocations_total",
    "Allocate calls, by result (ok or the error kind).",
    ["result"],
)
ALLOCATE_SECONDS = Histogram(
    P + "allocate_duration_seconds",
    "Duration of whole Allocate calls, vendor acquires included.",
    buckets=LATENCY_BUCKETS,
)
ACQUIRE_SECONDS = Histogram(
    P + "acquire_duration_seconds",
    "Duration of QRMI acquire calls made for Allocate, by backend.",
    ["backend"],
    buckets=LATENCY_BUCKETS,
)
RELEASES = ReleaseMetrics.create(P, "device plugin")
ACQUISITIONS_LIVE = Gauge(
    P + "acquisitions_live",
    "Acquisitions held for pods (acquired and not yet released), by backend.",
    ["backend"],
)
LOSSES = LossReporter.create(P, "device plugin")
DEVICE_HEALTHY = Gauge(
    P + "device_healthy",
    "1 if the device (one lane of a backend) is advertised Healthy to the kubelet.",
    ["device", "backend"],
)
REGISTRATIONS = Counter(
    P + "registrations_total",
    "Successful registrations with the kubelet (more than one means it restarted).",
)
RECONCILES = Counter(
    P + "reconciles_total",
    "PodResources reconcile passes, by result (ok, or error when List failed).",
    ["result"],
)


def set_live(backend: str, n: int) -> None:
    """Set the live-acquisition gauge of a backend. A series stays (at 0) once its backend
    has had an acquisition: one per backend at most, and dropping it at every zero would
    rebuild it on the next Allocate of a one-lane backend."""
    ACQUISITIONS_LIVE.labels(backend).set(n)
