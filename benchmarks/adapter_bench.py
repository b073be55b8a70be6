"""QRMI adapter overhead: acquire/release and status through ``QrmiClient`` vs direct qrmi.

    python -m benchmarks.adapter_bench [--n 200]

Both sides use the real ``qrmi`` client against the local emulator in the same run. The
direct side reuses one ``QuantumResource`` (the cheapest possible caller); the adapter adds
a daemon thread per call for the deadline, error mapping, metrics and, for acquire, a fresh
resource object so two acquisitions never share session state.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import qrmi as _qrmi

from qpu_k8s.core.model import parse_backend
from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient
from qpu_k8s.emulator import running_emulator
from testsupport.grpc_floor import LatencySummary, summarize

BACKEND = "fake_manila"
qrmi: Any = _qrmi  # re-exported from a Rust core that type checkers cannot see


def _time(n: int, fn: Callable[[], object]) -> LatencySummary:
    for _ in range(min(10, n)):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    with running_emulator(noise=False) as emu:
        direct = qrmi.QuantumResource.from_config(
            BACKEND, qrmi.ResourceType.IBMQuantumComputeService, emu.qrmi_config(BACKEND)
        )
        backend = parse_backend(
            {
                "name": "bench",
                "spec": {
                    "resourceId": BACKEND,
                    "type": "ibm-quantum-compute-service",
                    "config": emu.ibm_config(BACKEND),
                    "credentialsSecretRef": {"name": "bench"},
                },
            }
        )
        client = QrmiClient(backend, emu.ibm_credentials(), timeouts=CallTimeouts.uniform(30))

        def direct_cycle() -> None:
            direct.release(direct.acquire())

        def adapter_cycle() -> None:
            client.release(client.acquire())

        rows = [
            ("acquire+release, direct qrmi", _time(args.n, direct_cycle), None),
            ("acquire+release, QrmiClient", _time(args.n, adapter_cycle), "acquire+release"),
            ("status, direct qrmi", _time(args.n, direct.status), None),
            ("status (health), QrmiClient", _time(args.n, client.health), "status"),
        ]
    base = {r[0].split(",")[0]: r[1] for r in rows if r[2] is None}
    print(f"{'QRMI call (emulator)':<34}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}   ratio p50 / p99")
    for name, s, ref in rows:
        ratio = ""
        if ref is not None:
            b = base[ref]
            ratio = f"   {s.p50 / b.p50:5.2f}x / {s.p99 / b.p99:5.2f}x vs direct"
        print(f"{name:<34}{s.n:>6}{s.p50 * 1e3:>10.3f}{s.p99 * 1e3:>10.3f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
