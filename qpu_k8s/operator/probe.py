"""Probing one backend from the event loop: health, and target() when due.

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


async def run_probe(client: QuantumResourceClient, *, with_target: bool = True) -> ProbeResult:
    """Health always; target() too when asked for and the backend answered online.

    target() is the large answer (calibration data: ~0.5 MB of JSON for a 133-qubit IBM
    device), so the controller asks for it when a backend is new or changed and then every
    ``target_refresh`` seconds, not at every health probe.
    """
    start = time.perf_counter()
    name = client.backend.name
    health = await in_thread(client.health, name=f"probe-{name}")
    target: dict[str, Any] | None = None
    error: str | None = None
    if health.healthy and with_target:
        try:
            target = await in_thread(client.target, name=f"target-{name}")
        except QpuError as err:
            error = redact(err.message)
    return ProbeResult(health, target, error, time.perf_counter() - start)
