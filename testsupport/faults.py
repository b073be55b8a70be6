"""What the fault-injection suite adds to the agents' test support: its backends (probed as
often as a QuantumBackend may be) and the numbers each test reports for docs/reliability.md."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from qpu_k8s.emulator import Emulator
from testsupport.emulator import ibm_backend, pasqal_backend

RESULTS = Path(os.environ.get("QPU_K8S_FAULT_RESULTS", "/tmp/qpu-k8s-fault-results.jsonl"))
PROBE_INTERVAL = 5  # the smallest probeIntervalSeconds a QuantumBackend may set


def record_result(fault: str, **numbers: Any) -> None:
    """Append one measured outcome (docs/reliability.md is written from these)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"fault": fault, "at": time.time(), **numbers}) + "\n")


def elapsed(start: float) -> float:
    """Seconds since ``start`` (a ``time.monotonic()``), to the millisecond."""
    return round(time.monotonic() - start, 3)


def ibm(
    emu: Emulator,
    name: str,
    rid: str,
    *,
    lanes: int = 1,
    node: str | None = None,
    max_ttl: int | None = None,
    secret_name: str = "ibm-creds",  # noqa: S107 - a Secret name, not a value
    probe: int = PROBE_INTERVAL,
) -> dict[str, Any]:
    """An IBM backend on the emulator, probed every ``probe`` s; node-bound to ``node``."""
    return ibm_backend(
        emu,
        name,
        rid,
        lanes,
        node=node,
        max_ttl=max_ttl,
        secret_name=secret_name,
        probeIntervalSeconds=probe,
    )


def pasqal(emu: Emulator, name: str, device: str, *, node: str | None = None) -> dict[str, Any]:
    """A Pasqal device on the emulator, probed every 5 s; node-bound to ``node``."""
    return pasqal_backend(emu, name, device, node=node, probeIntervalSeconds=PROBE_INTERVAL)
