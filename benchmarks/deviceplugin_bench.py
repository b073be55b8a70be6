"""Device-plugin benchmark: Allocate against the durability floor, from 1 to 1000 live
acquisitions on the node; the vendor's share; the agent's RSS.

    python -m benchmarks.deviceplugin_bench [--levels 1 10 100 1000] [--rounds 20]
        [--per-round 10] [--vendor-n 40]

Measured in one run, floor and target alternated in rounds (:mod:`benchmarks.measure`):

1. the durability floor (``testsupport.grpc_floor.DurableFloor``): the same
   ``v1beta1.DevicePlugin/Allocate`` method on the agents' own gRPC server class, answering
   a real Allocate response after one synced append of a record the size of the one
   Allocate syncs (its token record). Nothing that remembers what it handed out before
   answering can be cheaper.
2. Allocate, vendor excluded: the real agent in this process (its gRPC server on a unix
   socket, its journal on disk, its reconciler and release runner running) with an
   *instant* QRMI client, called with the same stub. The node holds 1, 10, 100, 1000 live
   acquisitions, bound to pods the fake PodResources lists; each measured Allocate's own
   acquisition is released right after it (untimed), so the count stays put.
3. the vendor: Allocate through the real ``qpu-k8s device-plugin`` process with the real
   ``qrmi`` client against the local emulator, against the direct qrmi acquire.
4. that process's RSS (``VmRSS``/``VmHWM``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.measure import Compared, compare, timed
from benchmarks.profiling import Hot, hot_note, hot_table, profile_calls
from benchmarks.report import floor_targets, heading, ms, table, targets
from qpu_k8s.core import logs
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.qrmi_client import QuantumResourceClient, qrmi
from qpu_k8s.deviceplugin.agent import DevicePlugin, DevicePluginConfig
from qpu_k8s.deviceplugin.server import DevicePluginServicer
from qpu_k8s.emulator import Emulator, running_emulator
from qpu_k8s.fakekubelet import FakeDevicePluginKubelet, FakePodResourcesServer, PodAllocation
from qpu_k8s.fakekubelet.common import unix_target
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from testsupport.grpc_floor import DurableFloor
from testsupport.instant_client import InstantClient

RESOURCE = "quantum.example.com/qpu"
ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
PROBE = "fake-manila"  # the backend whose lanes the measured Allocates take
PROBE_LANES = 8
FILL_LANES = 64  # lanes per backend that holds the node's live acquisitions
# Synced appends of the untimed release after each measured Allocate (releasing, released);
# the floor makes as many after each of its calls.
RELEASE_SYNCS = 2


def _instant(backend: QuantumBackend, creds: Mapping[str, str]) -> QuantumResourceClient:
    return InstantClient(backend, creds)


def _backend(emu: Emulator, name: str, lanes: int) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "resourceId": "fake_manila" if name == PROBE else name.replace("-", "_"),
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config("fake_manila"),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "lanes": lanes,
        },
    }


def _layout(root: Path, emu: Emulator, fill_backends: int = 0) -> None:
    (root / "dp").mkdir(parents=True)
    docs = [_backend(emu, PROBE, PROBE_LANES)]
    docs += [_backend(emu, f"fill-{i:02d}", FILL_LANES) for i in range(fill_backends)]
    (root / "backends.yaml").write_text(yaml.safe_dump({"backends": docs}))
    creds = root / "creds" / "ibm-creds"
    creds.mkdir(parents=True)
    for key, value in emu.ibm_credentials().items():
        (creds / key).write_text(value)


def _request(*devices: str) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(devices))]
    )


def _token(resp: api_pb2.AllocateResponse) -> str:
    envs = resp.container_responses[0].envs
    return next(v for k, v in envs.items() if k.endswith("_QRMI_JOB_ACQUISITION_TOKEN"))


@dataclass
class Level:
    live: int
    compared: Compared


class _Node:
    """The in-process agent on a fake kubelet, and its live acquisitions."""

    def __init__(self, agent: DevicePlugin, pods: FakePodResourcesServer) -> None:
        self.agent = agent
        self.pods = pods
        self.held: list[PodAllocation] = []
        channel = grpc.insecure_channel(unix_target(agent.registrar.socket_path))
        self.channel = channel
        self.allocate = api_pb2_grpc.DevicePluginStub(channel).Allocate

    def hold(self, count: int, lanes: list[str]) -> None:
        """Bring the node to ``count`` live acquisitions, each held by a listed pod."""
        while len(self.held) < count:
            device = lanes[len(self.held)]
            self.allocate(_request(device), timeout=10)
            pod = PodAllocation.with_devices(f"p{len(self.held)}", "b", RESOURCE, [device])
            self.held.append(pod)
        self.pods.set_pods(self.held)
        self.agent.reconciler.pass_once()  # binds them

    def release(self, token: str) -> None:
        """Give a measured Allocate's acquisition back at once (untimed)."""
        ledger = self.agent.ledger
        acq = next(a for a in ledger.live() if a.token == token)
        ledger.mark_releasing([acq.id], "benchmark", time.time())
        self.agent.allocator.releases.pay(ledger.debt(acq.id))


@contextlib.contextmanager
def _node(emu: Emulator, root: Path, fill_backends: int) -> Iterator[_Node]:
    _layout(root, emu, fill_backends)
    with (
        FakeDevicePluginKubelet(root / "dp") as kubelet,
        FakePodResourcesServer(root / "pr.sock") as pods,
    ):
        agent = DevicePlugin(
            DevicePluginConfig(
                device_plugin_dir=root / "dp",
                pod_resources_socket=root / "pr.sock",
                state_dir=root / "state",
                config=root / "backends.yaml",
                credentials_dir=root / "creds",
                reconcile_interval=3600.0,  # the benchmark drives reconciles itself
                release_grace=0.0,
                restart_hold=0.0,
            ),
            client_factory=_instant,
        )
        agent.start()
        try:
            total = PROBE_LANES + fill_backends * FILL_LANES
            kubelet.wait_for_devices(
                RESOURCE, lambda ds: len(ds) == total and all(d.healthy for d in ds), 60
            )
            node = _Node(agent, pods)
            try:
                yield node
            finally:
                node.channel.close()
        finally:
            agent.stop()


def bench_growth(
    emu: Emulator, levels: list[int], rounds: int, per_round: int
) -> tuple[list[Level], list[Hot]]:
    """Allocate vs the durability floor at each number of live acquisitions, and the
    profile of the Allocate handler at the last one."""
    fill = -(-max(levels) // FILL_LANES)
    with tempfile.TemporaryDirectory(prefix="dpb-", dir="/tmp") as tmp:
        root = Path(tmp)
        with _node(emu, root, fill) as node:
            lanes = [f"fill-{b:02d}-lane-{i}" for b in range(fill) for i in range(FILL_LANES)]
            journal = root / "state" / "acquisitions.journal"
            # One Allocate to learn the real response and the synced record's size (the
            # journal's last line is its token record).
            sample = node.allocate(_request(f"{PROBE}-lane-0"), timeout=10)
            record = journal.read_bytes().splitlines(keepends=True)[-1]
            node.release(_token(sample))
            out = []
            floor_sock = root / "floor.sock"
            with (
                DurableFloor(
                    floor_sock,
                    ALLOCATE,
                    api_pb2.AllocateRequest,
                    response=sample,
                    record=record,
                    journal=root / "floor.j",
                ) as durable,
                grpc.insecure_channel(unix_target(floor_sock)) as channel,
            ):
                floor_call = api_pb2_grpc.DevicePluginStub(channel).Allocate
                step = [0]

                def floor() -> float:
                    step[0] += 1
                    device = f"{PROBE}-lane-{step[0] % PROBE_LANES}"
                    took = timed(lambda: floor_call(_request(device), timeout=10))
                    durable.append_synced(RELEASE_SYNCS)
                    return took

                def target() -> float:
                    step[0] += 1
                    request = _request(f"{PROBE}-lane-{step[0] % PROBE_LANES}")
                    start = time.perf_counter()
                    resp = node.allocate(request, timeout=10)
                    took = time.perf_counter() - start
                    node.release(_token(resp))
                    return took

                for live in levels:
                    node.hold(live, lanes)
                    got = compare(floor, target, rounds=rounds, per_round=per_round)
                    out.append(Level(len(node.agent.ledger.live()), got))
            servicer = DevicePluginServicer(node.agent.board, node.agent.allocator)
            requests = [_request(f"{PROBE}-lane-0")]
            answers: list[api_pb2.AllocateResponse] = []

            def handle() -> None:
                answers.append(servicer.Allocate(requests[-1], None))  # type: ignore[arg-type]

            def next_request() -> None:  # unprofiled: the release, and the next request
                node.release(_token(answers.pop()))
                step[0] += 1
                requests.append(_request(f"{PROBE}-lane-{step[0] % PROBE_LANES}"))

            hot = profile_calls(handle, next_request, 200)
    return out, hot


def bench_vendor(emu: Emulator, n: int) -> tuple[Compared, tuple[int, int], tuple[int, int]]:
    """The real process with the real qrmi client: Allocate vs the direct qrmi acquire."""
    direct = qrmi.QuantumResource.from_config(
        "fake_manila", qrmi.ResourceType.IBMQuantumComputeService, emu.qrmi_config("fake_manila")
    )

    def acquire_direct() -> float:
        start = time.perf_counter()
        token = direct.acquire()
        took = time.perf_counter() - start
        direct.release(token)
        return took

    with tempfile.TemporaryDirectory(prefix="dpb-", dir="/tmp") as tmp:
        root = Path(tmp)
        _layout(root, emu)
        with (
            FakeDevicePluginKubelet(root / "dp") as kubelet,
            FakePodResourcesServer(root / "pr.sock"),
            _process(root) as proc,
        ):
            kubelet.wait_for_devices(
                RESOURCE, lambda ds: len(ds) == PROBE_LANES and all(d.healthy for d in ds), 60
            )
            started = _rss(proc.pid)
            channel = grpc.insecure_channel(unix_target(root / "dp" / _endpoint(kubelet)))
            call = api_pb2_grpc.DevicePluginStub(channel).Allocate
            step = [0]

            def allocate() -> float:
                step[0] += 1
                request = _request(f"{PROBE}-lane-{step[0] % PROBE_LANES}")
                return timed(lambda: call(request, timeout=30))

            # No release in between: the agent reconciles every hour here, so no background
            # release competes with the measured calls; the sessions end with the emulator.
            got = compare(acquire_direct, allocate, rounds=max(1, n // 5), per_round=5, warmup=3)
            channel.close()
            after = _rss(proc.pid)
    return got, started, after


def _endpoint(kubelet: FakeDevicePluginKubelet) -> str:
    return next(r.endpoint for r in kubelet.registrations if r.resource_name == RESOURCE)


@contextlib.contextmanager
def _process(root: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [
        sys.executable, "-m", "qpu_k8s.cli", "device-plugin",
        "--device-plugin-dir", str(root / "dp"),
        "--pod-resources-socket", str(root / "pr.sock"),
        "--state-dir", str(root / "state"),
        "--config", str(root / "backends.yaml"),
        "--credentials-dir", str(root / "creds"),
        "--metrics-address", "",
        "--reconcile-interval", "3600",
        "--kubelet-restart-hold", "0",
        "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--vendor-n", type=int, default=40, help="calls with the real vendor")
    args = parser.parse_args(argv)

    heading("Device plugin: Allocate")
    # The agent in this process logs as deployed (info, JSON lines), to nowhere.
    logs.setup("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    with running_emulator(noise=False) as emu:
        levels, hot = bench_growth(emu, sorted(args.levels), args.rounds, args.per_round)
        vendor, rss_start, rss_after = bench_vendor(emu, args.vendor_n)

    n = args.rounds * args.per_round
    print(f"Allocate (instant vendor) vs the durability floor, {n} calls of each per row:\n")
    rows = [
        (lv.live, ms(lv.compared.floor_p50), ms(lv.compared.target_p50),
         f"{lv.compared.ratio:.2f}x", ms(lv.compared.excess))
        for lv in levels
    ]  # fmt: skip
    print(table(["live acquisitions", "floor p50", "Allocate p50", "ratio", "above floor"], rows))
    print(
        f"\nWith the real vendor (the `qpu-k8s device-plugin` process, real qrmi, emulator): "
        f"direct qrmi acquire p50 {ms(vendor.floor_p50)}, Allocate p50 "
        f"{ms(vendor.target_p50)} ({vendor.ratio:.2f}x, {ms(vendor.excess)} above).\n"
        f"\nRSS of that process: {rss_start[0] / 1024:.1f} MiB after start, "
        f"{rss_after[0] / 1024:.1f} MiB after {args.vendor_n + 3} Allocates "
        f"(peak {rss_after[1] / 1024:.1f} MiB)."
    )
    print(
        f"\nWhere the Allocate handler spends its own time ({levels[-1].live} live; "
        "benchmarks/profiling.py):\n"
    )
    print(hot_table(hot))
    targets(
        floor_targets(
            "device plugin: Allocate",
            [lv.compared.ratio for lv in levels],
            str(levels[0].live),
            f"{levels[-1].live} live",
            hot_note(hot),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
