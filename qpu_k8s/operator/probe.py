"""Probing one backend from the event loop: health, then target() and metadata(), each bounded.

The QRMI adapter already puts a deadline on every vendor call; the calls are blocking, so
each runs in its own daemon thread through :func:`qpu_k8s.core.deadline.acall_with_deadline`,
which also bounds the wait from the loop's side (a second guard, one second looser, so the
adapter's own timeout and its error mapping normally win). Clients are cached per backend
and per credential fingerprint, so a rotated Secret gets a fresh client and the vendor's
token cache survives between probes otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from qpu_k8s.core.credentials import redact
from qpu_k8s.core.deadline import DeadlineExceeded, acall_with_deadline
from qpu_k8s.core.errors import QpuError
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.qrmi_client import Health, QrmiClient, QuantumResourceClient
from qpu_k8s.operator.reconcile import ProbeResult

ClientFactory = Callable[[QuantumBackend, Mapping[str, str], float], QuantumResourceClient]
GRACE = 1.0


def qrmi_client_factory(
    backend: QuantumBackend, creds: Mapping[str, str], timeout: float
) -> QuantumResourceClient:
    return QrmiClient(backend, creds, timeout=timeout)


class ClientCache:
    """One client per backend, rebuilt when its spec or credentials change."""

    def __init__(self, factory: ClientFactory, timeout: float) -> None:
        self._factory = factory
        self._timeout = timeout
        self._key = secrets.token_bytes(32)  # fingerprints are useless outside this process
        self._clients: dict[str, tuple[str, QuantumResourceClient]] = {}

    def _fingerprint(self, backend: QuantumBackend, creds: Mapping[str, str]) -> str:
        blob = json.dumps(
            [backend.model_dump(mode="json"), sorted(creds.items())], sort_keys=True
        ).encode()
        return hmac.new(self._key, blob, hashlib.sha256).hexdigest()

    def get(self, backend: QuantumBackend, creds: Mapping[str, str]) -> QuantumResourceClient:
        fp = self._fingerprint(backend, creds)
        hit = self._clients.get(backend.name)
        if hit is not None and hit[0] == fp:
            return hit[1]
        client = self._factory(backend, creds, self._timeout)
        self._clients[backend.name] = (fp, client)
        return client

    def drop(self, name: str) -> None:
        self._clients.pop(name, None)

    def __len__(self) -> int:
        return len(self._clients)


async def run_probe(client: QuantumResourceClient, deadline: float) -> ProbeResult:
    """Health always; target() and metadata() when the backend is online.

    ``deadline`` bounds each call (seconds); the client's own timeout should be the same.
    """
    timeout = deadline
    start = time.perf_counter()
    name = client.backend.name
    try:
        health = await acall_with_deadline(client.health, timeout + GRACE, name=f"probe-{name}")
    except DeadlineExceeded:
        health = Health(False, "timeout", f"no answer within {timeout:g}s")
    target: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    error: str | None = None
    if health.healthy:
        try:
            target = await acall_with_deadline(
                client.target, timeout + GRACE, name=f"target-{name}"
            )
        except (QpuError, DeadlineExceeded) as err:
            error = redact(getattr(err, "message", None) or str(err))
        try:
            metadata = await acall_with_deadline(
                client.metadata, timeout + GRACE, name=f"metadata-{name}"
            )
        except (QpuError, DeadlineExceeded):
            metadata = None
    return ProbeResult(health, target, metadata, error, time.perf_counter() - start)
