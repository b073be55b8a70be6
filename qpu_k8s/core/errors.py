"""Typed errors for everything that crosses the vendor boundary.

Callers (Allocate, NodePrepareResources, the operator's probes) branch on these, never on
qrmi's exception classes or message text, and every message is already redacted.
"""

from __future__ import annotations


class QpuError(Exception):
    """Base class: a QRMI call failed. ``kind`` is a stable label for metrics."""

    kind = "vendor"

    def __init__(self, backend: str, operation: str, message: str) -> None:
        self.backend = backend
        self.operation = operation
        self.message = message
        super().__init__(f"{operation} on backend {backend!r} failed: {message}")


class QpuTimeoutError(QpuError):
    """The vendor did not answer within our deadline (qrmi itself has no client timeout).

    ``in_flight``: the call was sent and may still take effect at the vendor (a late
    session, a late release); False when it was refused before anything was sent.
    """

    kind = "timeout"

    def __init__(self, backend: str, operation: str, message: str, *, in_flight: bool = True):
        self.in_flight = in_flight
        super().__init__(backend, operation, message)


class QpuAuthError(QpuError):
    """The vendor rejected the credentials: fix the Secret named by credentialsSecretRef."""

    kind = "auth"


class QpuConfigError(QpuError):
    """QRMI refused the configuration or the input (missing key, bad resource id...)."""

    kind = "config"


class QpuNotFoundError(QpuError):
    """The backend or task does not exist at the vendor."""

    kind = "not_found"


class QpuUnavailableError(QpuError):
    """The vendor could not be reached or answered with an error (5xx, refused, reset)."""

    kind = "unavailable"


class QpuTaskNotReadyError(QpuError):
    """task_result was asked for a task that has not completed."""

    kind = "not_ready"


class CredentialsError(Exception):
    """Credentials for a backend are missing or incomplete. Never carries a secret value."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"credentials for backend {backend!r}: {message}")
