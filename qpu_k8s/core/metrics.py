"""Prometheus metrics shared by every agent (prefix ``qpu_k8s_``), and the /metrics server.

Vendor-call metrics live here because every agent makes vendor calls through the one
adapter; agent-specific metrics live next to their agent but use :data:`PREFIX`.
Labels never hold credentials: only backend names, operations and error kinds.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

PREFIX = "qpu_k8s_"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

VENDOR_CALL_SECONDS = Histogram(
    PREFIX + "vendor_call_duration_seconds",
    "Duration of QRMI vendor calls, by QRMI resource type and operation (per type, not per "
    "backend: an operator with 1000 backends would otherwise export 50k series).",
    ["type", "operation"],
    buckets=LATENCY_BUCKETS,
)
VENDOR_ERRORS = Counter(
    PREFIX + "vendor_errors_total",
    "Failed QRMI vendor calls, by backend, operation and error kind.",
    ["backend", "operation", "kind"],
)
LATE_ACQUISITIONS = Counter(
    PREFIX + "vendor_late_acquisitions_total",
    "Acquires that answered after their deadline (nobody was given the token), by backend "
    "and result: released at once, or release_failed (the session ends at its own expiry).",
    ["backend", "result"],
)
ABANDONED_CALLS = Gauge(
    PREFIX + "vendor_calls_abandoned",
    "Vendor calls that timed out and are still running in an abandoned thread.",
)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


def serve_metrics(address: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer | None:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; ``""`` disables it.

    Returns the server so callers can read the bound port (``:0`` picks a free one) and
    shut it down.
    """
    if not address:
        return None
    host, _, port = address.rpartition(":")
    server = make_server(
        host.strip("[]") or "127.0.0.1",
        int(port),
        make_wsgi_app(registry),
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
