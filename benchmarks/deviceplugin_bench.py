"""Device-plugin benchmark: Allocate latency against a bare gRPC floor, acquire cost, RSS.

    python -m benchmarks.deviceplugin_bench [--n 400] [--vendor-n 40]

Measured in one run, on this machine:

1. floor: a bare unary gRPC call over a unix socket (``testsupport.grpc_floor``:
   trivial servicer, same process, same client stack).
2. Allocate, vendor acquire excluded: the real agent (in-process, real gRPC server on a unix
   socket, real checkpoint writes with fsync, real reconciler releasing in the background)
   with an *instant* QRMI client whose acquire returns at once. What remains is our own
   work: lookup, ledger intent + commit (two atomic checkpoint writes), env rendering,
   gRPC. Reported as p50/p99 and as ratios to the floor.
3. vendor acquire, reported separately: the real ``qrmi`` client against the local emulator
   (IAM token + ``POST /sessions``), called directly; and Allocate through the real
   ``qpu-k8s device-plugin`` process doing that acquire, as a ratio to the direct call.
4. RSS of that ``qpu-k8s device-plugin`` process (``VmRSS``/``VmHWM`` from /proc), after
   start-up and after the Allocates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from qpu_k8s.core.journal import Journal
from qpu_k8s.core.model import QuantumBackend, parse_backend
from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient, QuantumResourceClient
from qpu_k8s.deviceplugin.agent import DevicePlugin, DevicePluginConfig
from qpu_k8s.emulator import Emulator, running_emulator
from qpu_k8s.fakekubelet import FakeDevicePluginKubelet, FakePodResourcesServer
from testsupport.grpc_floor import LatencySummary, measure_unary_floor, summarize
from testsupport.instant_client import InstantClient

RESOURCE = "quantum.example.com/qpu"
LANES = 8


def _instant(backend: QuantumBackend, creds: Mapping[str, str]) -> QuantumResourceClient:
    return InstantClient(backend, creds)


def _backend_doc(emu: Emulator) -> dict[str, Any]:
    return {
        "name": "fake-manila",
        "spec": {
            "resourceId": "fake_manila",
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config("fake_manila"),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "lanes": LANES,
        },
    }


def _layout(root: Path, emu: Emulator) -> None:
    (root / "dp").mkdir(parents=True)
    (root / "backends.yaml").write_text(yaml.safe_dump({"backends": [_backend_doc(emu)]}))
    creds = root / "creds" / "ibm-creds"
    creds.mkdir(parents=True)
    for key, value in emu.ibm_credentials().items():
        (creds / key).write_text(value)


def _allocate_loop(
    kubelet: FakeDevicePluginKubelet, n: int, warmup: int, released: Callable[[str], bool]
) -> list[float]:
    """Allocate one lane per call, round robin; only the Allocate call is timed.

    No pod is ever listed, so the plugin's reconciler releases each acquisition (grace 0)
    right after its Allocate; the loop waits for that, untimed, so every Allocate meets the
    steady-state ledger of a node (its live acquisitions plus capped tombstones) rather
    than a pile-up the benchmark itself made.
    """
    samples = []
    for i in range(warmup + n):
        device = f"fake-manila-lane-{i % LANES}"
        start = time.perf_counter()
        resp = kubelet.allocate(RESOURCE, [[device]])
        took = time.perf_counter() - start
        if i >= warmup:
            samples.append(took)
        token = resp.container_responses[0].envs["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
        deadline = time.monotonic() + 30
        while not released(token):
            if time.monotonic() > deadline:
                raise RuntimeError(f"acquisition {token} was not released within 30 s")
            time.sleep(0.001)
    return samples


def durable_append_samples(where: Path, record: BaseModel, n: int) -> list[float]:
    """The cost of one synced journal append of ``record`` (the durability floor's write)."""
    journal: Journal[Any] = Journal(where / "floor.journal", type(record))
    journal.open()
    out = []
    try:
        for i in range(n):
            start = time.perf_counter()
            with journal.transaction() as txn:
                txn.put(str(i % 8), record)
            out.append(time.perf_counter() - start)
    finally:
        journal.close()
    return out


def bench_overhead(emu: Emulator, n: int) -> tuple[LatencySummary, LatencySummary]:
    """Allocate with an instant vendor, and one durable journal append of its record."""
    root = Path(tempfile.mkdtemp(prefix="dpb-", dir="/tmp"))
    try:
        _layout(root, emu)
        with (
            FakeDevicePluginKubelet(root / "dp") as kubelet,
            FakePodResourcesServer(root / "pr.sock"),
        ):
            agent = DevicePlugin(
                DevicePluginConfig(
                    device_plugin_dir=root / "dp",
                    pod_resources_socket=root / "pr.sock",
                    state_dir=root / "state",
                    config=root / "backends.yaml",
                    credentials_dir=root / "creds",
                    reconcile_interval=1.0,
                    release_grace=0.0,
                    restart_hold=0.0,
                ),
                client_factory=_instant,
            )
            agent.start()
            try:
                kubelet.wait_for_devices(
                    RESOURCE, lambda ds: len(ds) == LANES and all(d.healthy for d in ds), 30
                )

                def released(token: str) -> bool:
                    return all(a.token != token for a in agent.ledger.live())

                samples = _allocate_loop(kubelet, n, 50, released)
                record = agent.ledger.snapshot()[-1]
            finally:
                agent.stop()
            writes = durable_append_samples(root / "floor", record, 100)
        return summarize(samples), summarize(writes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_direct_acquire(emu: Emulator, n: int) -> LatencySummary:
    backend = parse_backend(_backend_doc(emu))
    client = QrmiClient(backend, emu.ibm_credentials(), timeouts=CallTimeouts.uniform(30))
    client.release(client.acquire())  # warm: IAM token cached, connections open
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        token = client.acquire()
        samples.append(time.perf_counter() - start)
        client.release(token)
    return summarize(samples)


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from /proc (psutil is not installed)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def bench_process(emu: Emulator, n: int) -> tuple[LatencySummary, tuple[int, int], tuple[int, int]]:
    """The real ``qpu-k8s device-plugin`` process, real qrmi against the emulator."""
    root = Path(tempfile.mkdtemp(prefix="dpb-", dir="/tmp"))
    proc = None
    try:
        _layout(root, emu)
        with (
            FakeDevicePluginKubelet(root / "dp") as kubelet,
            FakePodResourcesServer(root / "pr.sock"),
        ):
            argv = [
                sys.executable, "-m", "qpu_k8s.cli", "device-plugin",
                "--device-plugin-dir", str(root / "dp"),
                "--pod-resources-socket", str(root / "pr.sock"),
                "--state-dir", str(root / "state"),
                "--config", str(root / "backends.yaml"),
                "--credentials-dir", str(root / "creds"),
                "--metrics-address", "",
                "--reconcile-interval", "1",
                "--release-grace", "0",
                "--kubelet-restart-hold", "0",
                "--log-level", "warning",
            ]  # fmt: skip
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            kubelet.wait_for_devices(
                RESOURCE, lambda ds: len(ds) == LANES and all(d.healthy for d in ds), 60
            )
            started = _rss(proc.pid)

            def released(token: str) -> bool:
                session = emu.state.session(token)
                return session is not None and not session.is_open

            samples = _allocate_loop(kubelet, n, 5, released)
            after = _rss(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        return summarize(samples), started, after
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _ms(x: float) -> str:
    return f"{x * 1e3:8.3f} ms"


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="Allocate calls (instant vendor)")
    parser.add_argument("--vendor-n", type=int, default=40, help="calls with the real vendor")
    args = parser.parse_args(argv)

    floor = summarize(measure_unary_floor(2000))
    with running_emulator(noise=False) as emu:
        overhead, writes = bench_overhead(emu, args.n)
        direct = bench_direct_acquire(emu, args.vendor_n)
        full, rss_start, rss_after = bench_process(emu, args.vendor_n)

    rows = [
        ("bare gRPC unary call (floor)", floor, None),
        ("Allocate, vendor acquire excluded", overhead, floor),
        ("  one durable append of that record", writes, None),
        ("qrmi acquire, direct (emulator)", direct, None),
        ("Allocate in qpu-k8s process, real acquire", full, direct),
    ]
    print(f"device plugin benchmark (cpus: {os.cpu_count()}, python {sys.version.split()[0]})")
    print(f"{'measurement':<44}{'n':>6}{'p50':>12}{'p99':>12}   ratio p50 / p99")
    for name, s, base in rows:
        ratio = f"   {s.p50 / base.p50:6.1f}x / {s.p99 / base.p99:6.1f}x" if base else ""
        print(f"{name:<44}{s.n:>6}{_ms(s.p50):>12}{_ms(s.p99):>12}{ratio}")
    print("ratios: Allocate (vendor excluded) vs the gRPC floor; Allocate through the qpu-k8s")
    print("process (real acquire) vs the direct qrmi acquire, both against the local emulator.")
    print("Allocate appends twice: the intent (unsynced) before the vendor call, the token synced.")
    print(
        f"agent RSS (qpu-k8s device-plugin): {rss_start[0] / 1024:.1f} MiB after start, "
        f"{rss_after[0] / 1024:.1f} MiB after {args.vendor_n + 5} Allocates "
        f"(peak {rss_after[1] / 1024:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
