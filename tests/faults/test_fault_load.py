"""Fault 7: load. 200 pods allocating and ending in bursts against 4 lanes, and a node
agent configured with 1000 QuantumBackends.

The pod churn runs the real device-plugin agent in this process (its ledger is read
directly) with the fake kubelet, PodResources and the emulator as the vendor. The kubelet
is simulated step by step (no wall-clock waits): pods arrive in bursts larger than the
free lanes, wait for one, get it through GetPreferredAllocation + Allocate, run a random
number of steps, and end. Asserted: the lanes are used evenly, every session the vendor
opened is closed with exactly one release, nothing is left live.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable

import pytest

from qpu_k8s.deviceplugin.agent import DevicePlugin
from qpu_k8s.deviceplugin.state import HOLDING
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    DeviceState,
    FakeDevicePluginKubelet,
    FakePodResourcesServer,
    PodAllocation,
)
from testsupport.deviceplugin import Layout, StartPlugin
from testsupport.emulator import open_tokens, release_requests
from testsupport.faults import ibm, record_result
from testsupport.names import RESOURCE
from testsupport.waiting import wait_for

PODS = 200


def test_200_pods_in_bursts_on_4_lanes_balanced_and_nothing_leaked(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    start_agent: Callable[..., DevicePlugin],
) -> None:
    layout.write_config(
        [
            ibm(emu, "manila", "fake_manila", lanes=2),
            ibm(emu, "nairobi", "fake_nairobi", lanes=2),
        ]
    )
    agent = start_agent()
    free = {d.id for d in kubelet.devices(RESOURCE)}
    assert len(free) == 4
    rng = random.Random(20260425)  # noqa: S311 - a reproducible workload, not crypto
    waiting: deque[str] = deque()
    running: dict[str, tuple[str, int]] = {}  # pod -> (device, last step)
    per_device: Counter[str] = Counter()
    allocate_s: list[float] = []
    tokens: set[str] = set()
    peak_live = 0
    created = step = 0
    started = time.monotonic()
    while created < PODS or waiting or running:
        step += 1
        if step % 6 == 1 and created < PODS:  # a burst: more pods than lanes at once
            for _ in range(min(rng.randint(3, 12), PODS - created)):
                waiting.append(f"pod-{created:03d}")
                created += 1
        for name, (device, last) in list(running.items()):
            if last <= step:
                del running[name]
                free.add(device)
        while waiting and free:
            name = waiting.popleft()
            (device,) = kubelet.get_preferred_allocation(RESOURCE, sorted(free), 1)
            t0 = time.perf_counter()
            resp = kubelet.allocate(RESOURCE, [[device]])
            allocate_s.append(time.perf_counter() - t0)
            env = dict(resp.container_responses[0].envs)
            resource_id = env["QRMI_JOB_QPU_RESOURCES"]
            tokens.add(env[f"{resource_id}_QRMI_JOB_ACQUISITION_TOKEN"])
            free.remove(device)
            per_device[device] += 1
            running[name] = (device, step + rng.randint(1, 5))
        pod_resources.set_pods(
            PodAllocation.with_devices(name, "load", RESOURCE, [device])
            for name, (device, _) in running.items()
        )
        peak_live = max(peak_live, len(agent.ledger.live()))
    churn = time.monotonic() - started

    # Every pod is gone: everything is released, each exactly once.
    assert emu.state.wait_until(lambda s: not s.open_sessions(), 15), open_tokens(emu)
    wait_for(lambda: not agent.ledger.live(), 10, "no live acquisition in the ledger")
    drained = time.monotonic() - started
    sessions = emu.state.sessions()
    assert len(tokens) == PODS
    assert {s.id for s in sessions} == tokens  # one session per pod, no extra acquire
    assert all(s.closed_by == "release" for s in sessions)
    assert [t for t in tokens if release_requests(emu, t) != 1] == []
    assert not [a for a in agent.ledger.snapshot() if a.state in HOLDING]
    # Balance: GetPreferredAllocation spread the pods over both backends and all lanes.
    per_backend = Counter(d.rsplit("-lane-", 1)[0] for d in per_device.elements())
    assert sum(per_device.values()) == PODS
    assert min(per_device.values()) >= PODS / 4 * 0.6, per_device
    assert abs(per_backend["manila"] - per_backend["nairobi"]) <= PODS * 0.15, per_backend
    record_result(
        "load-200-pods",
        pods=PODS,
        lanes=4,
        churn_s=round(churn, 2),
        drained_s=round(drained, 2),
        allocate_p50_ms=round(statistics.median(allocate_s) * 1000, 1),
        allocate_max_ms=round(max(allocate_s) * 1000, 1),
        per_device=dict(per_device),
        per_backend=dict(per_backend),
        peak_live=peak_live,
        leaked=0,
        double_releases=0,
    )


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a process, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


@pytest.mark.slow
def test_1000_backends_on_one_node_agent(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    """1000 QuantumBackends in the node config: all advertised and probed, Allocate still
    fast, memory bounded. (The operator's side, 1000 CRs, is the operator's benchmark.)"""
    rids = ["fake_manila", "fake_nairobi", "fake_lagos", "fake_torino"]
    layout.write_config(
        [ibm(emu, f"qpu-{i:04d}", rids[i % len(rids)], probe=300) for i in range(1000)]
    )
    start = time.monotonic()
    plugin = plugin_process()
    kubelet.wait_for_registration(timeout=30)
    kubelet.wait_for_devices(RESOURCE, lambda ds: len(ds) == 1000, 30)
    listed = time.monotonic() - start

    def healthy(ds: list[DeviceState]) -> bool:
        return len(ds) == 1000 and all(d.healthy for d in ds)

    kubelet.wait_for_devices(RESOURCE, healthy, 60)
    probed = time.monotonic() - start
    took = []
    for i in (0, 333, 666, 999):
        t0 = time.perf_counter()
        kubelet.allocate(RESOURCE, [[f"qpu-{i:04d}-lane-0"]])
        took.append(time.perf_counter() - t0)
    assert plugin.proc is not None
    status = _status(plugin.proc.pid)
    rss = status["VmRSS"] / 1024
    # Each qrmi object runs its own async runtime (2 threads, ~0.3 MiB): without the
    # process-wide cap on kept objects this was 2000+ threads and 337 MiB.
    assert status["Threads"] < 200, status
    assert rss < 150, f"device plugin RSS {rss:.0f} MiB with 1000 backends"
    record_result(
        "load-1000-backends-dp",
        backends=1000,
        listed_s=round(listed, 2),
        all_probed_healthy_s=round(probed, 2),
        allocate_max_ms=round(max(took) * 1000, 1),
        rss_mib=round(rss, 1),
        threads=status["Threads"],
    )
