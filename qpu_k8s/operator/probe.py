"""Probing one backend from the event loop: health, then target() and metadata().

Each vendor call carries its own deadline (the client's probe timeout); the calls block,
so each runs in its own daemon thread (:func:`qpu_k8s.core.deadline.in_thread`) and the
loop only awaits it. Clients are cached per backend and per credential fingerprint, so a
rotated Secret gets a fresh client and the vendor's token cache survives between probes
otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from qpu_k8s.core.credentials import redact
from qpu_k8s.core.deadline import in_thread
from qpu_k8s.core.errors import QpuError
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.qrmi_client import ClientFactory, QuantumResourceClient
from qpu_k8s.operator.reconcile import ProbeResult


class ClientCache:
    """One client per backend, rebuilt when its spec or credentials change."""

    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory
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
        client = self._factory(backend, creds)
        self._clients[backend.name] = (fp, client)
        return client

    def drop(self, name: str) -> None:
        self._clients.pop(name, None)

    def __len__(self) -> int:
        return len(self._clients)


async def run_probe(client: QuantumResourceClient) -> ProbeResult:
    """Health always; target() and metadata() when the backend is online."""
    start = time.perf_counter()
    name = client.backend.name
    health = await in_thread(client.health, name=f"probe-{name}")
    target: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    error: str | None = None
    if health.healthy:
        try:
            target = await in_thread(client.target, name=f"target-{name}")
        except QpuError as err:
            error = redact(err.message)
        try:
            metadata = await in_thread(client.metadata, name=f"metadata-{name}")
        except QpuError:
            metadata = None
    return ProbeResult(health, target, metadata, error, time.perf_counter() - start)
