"""Prometheus metrics of the DRA driver (prefix ``qpu_k8s_dra_``).

Vendor-call latency and errors come from the shared adapter metrics
(``qpu_k8s_vendor_call_duration_seconds``, ``qpu_k8s_vendor_errors_total``). Labels hold
operations, outcomes and error kinds only: never a claim's Secret, token or credential.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from qpu_k8s.core.metrics import LATENCY_BUCKETS, PREFIX
from qpu_k8s.node.losses import LossReporter
from qpu_k8s.node.releases import ReleaseMetrics

P = PREFIX + "dra_"

CLAIMS = Counter(
    P + "claims_total",
    "Claims handled by NodePrepareResources/NodeUnprepareResources, by operation and result "
    "(ok or the error kind).",
    ["operation", "result"],
)
CALL_SECONDS = Histogram(
    P + "call_duration_seconds",
    "Duration of whole NodePrepareResources/NodeUnprepareResources calls, by operation and "
    "API version.",
    ["operation", "api_version"],
    buckets=LATENCY_BUCKETS,
)
PREPARED_CLAIMS = Gauge(P + "prepared_claims", "Claims currently prepared on this node.")
PUBLISHED_DEVICES = Gauge(P + "published_devices", "Devices in this node's ResourceSlices.")
POOL_GENERATION = Gauge(P + "pool_generation", "Generation of this node's pool.")
SLICE_PUBLISHES = Counter(
    P + "slice_publishes_total",
    "Slice reconciles, by result: unchanged, written or error.",
    ["result"],
)
LOSSES = LossReporter.create(P, "DRA driver")
RELEASES = ReleaseMetrics.create(P, "DRA driver")
REGISTERED = Gauge(P + "registered", "1 while the kubelet has accepted our registration.")
CLAIM_STATUS_WRITES = Counter(
    P + "claim_status_writes_total",
    "Writes of prepared claims' status.devices, by result: ok, or why not (transient ones "
    "are retried: error, unavailable; permanent ones are not: gone, conflict, forbidden, "
    "invalid).",
    ["result"],
)
BINDING = Counter(
    P + "acquire_before_bind_total",
    "Claims acquired before their pod was bound, by result: acquired, failed (the claim is "
    "placed again), given_back (deleted or placed elsewhere before binding).",
    ["result"],
)
