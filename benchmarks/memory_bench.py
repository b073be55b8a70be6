"""Node agents' resident memory with 1, 10, 100, 1000 backends, a 133-qubit calibration among
them.

    python -m benchmarks.memory_bench [--levels 1 10 100 1000] [--settle 10]

Each agent runs as deployed: the ``qpu-k8s device-plugin`` and ``qpu-k8s dra-plugin``
commands as their own processes, with the chart's environment (``MALLOC_ARENA_MAX``), only
the light stack importable (:mod:`benchmarks.lightstack`), the real ``qrmi`` client against
the local emulator, the fake kubelet, and a fake apiserver for their Node, pods and
ResourceSlices and the operator's ConfigMap, which the agents follow as the chart has them
(``testsupport.nodeapi``). The config holds ``N`` node-bound IBM backends;
the first is ``fake_torino`` (133 qubits), whose ``target()`` the DRA driver turns into
calibration attributes. Measured once every backend is served (the device plugin's devices
all healthy at the kubelet; the DRA driver's slices hold every device and the calibration)
and ``--settle`` seconds more: ``VmRSS`` and the peak ``VmHWM`` from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks.chartenv import chart_env
from benchmarks.report import Target, heading, table, targets
from qpu_k8s.core.names import NODE_CONFIG_KEY, RESOURCE_NAME
from qpu_k8s.emulator import Emulator, running_emulator
from qpu_k8s.fakekubelet import FakeDevicePluginKubelet, FakePodResourcesServer
from testsupport import REPO
from testsupport.nodeapi import NodeApi

NODE = "bench-node"
LABELS = {"bench": "yes"}
LIMIT_MIB = 80.0
CALIBRATED = "q-0000"  # the fake_torino backend
CONFIG_MAP = ("qpu-system", "qpu-k8s-node-config")


def _backends(emu: Emulator, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        rid = "fake_torino" if i == 0 else "fake_manila"
        spec = {
            "resourceId": rid,
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config(rid),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "access": "node-bound",
            "nodeSelector": LABELS,
        }
        out.append({"name": f"q-{i:04d}", "spec": spec})
    return out


def _layout(root: Path, emu: Emulator, n: int, api: NodeApi) -> None:
    """The agent's files, and the operator's ConfigMap (the same config) in ``api``: the
    chart has the agents follow it through the apiserver and read the file until then."""
    text = yaml.safe_dump({"backends": _backends(emu, n)})
    (root / "backends.yaml").write_text(text)
    api.put_config_map(CONFIG_MAP[0], CONFIG_MAP[1], {NODE_CONFIG_KEY: text})
    creds = root / "creds" / "ibm-creds"
    creds.mkdir(parents=True)
    for key, value in emu.ibm_credentials().items():
        (creds / key).write_text(value)
    (root / "boot_id").write_text(str(uuid.uuid4()))


def _status(pid: int) -> tuple[float, float, int]:
    """(VmRSS MiB, VmHWM MiB, threads)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024, int(fields["Threads"])


@contextlib.contextmanager
def _agent(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "benchmarks.lightstack", "qpu_k8s.cli", *argv]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], within: float) -> float:
    start = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}")
        if time.monotonic() - start > within:
            raise TimeoutError(f"the agent was not ready within {within:.0f} s")
        time.sleep(0.2)  # polling another process's progress
    return time.monotonic() - start


def device_plugin(emu: Emulator, n: int, env: dict[str, str], settle: float) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="memb-", dir="/tmp") as tmp,
        NodeApi(NODE, LABELS) as api,
    ):
        root = Path(tmp)
        _layout(root, emu, n, api)
        (root / "dp").mkdir()
        argv = [
            "device-plugin",
            "--device-plugin-dir", str(root / "dp"),
            "--pod-resources-socket", str(root / "pr.sock"),
            "--state-dir", str(root / "state"),
            "--config", str(root / "backends.yaml"),
            "--config-map", "/".join(CONFIG_MAP),
            "--credentials-dir", str(root / "creds"),
            "--node-name", NODE,
            "--kubeconfig", str(api.kubeconfig(root / "kubeconfig")),
            "--metrics-address", "127.0.0.1:0",
            "--log-level", "info",
        ]  # fmt: skip
        with (
            FakeDevicePluginKubelet(root / "dp") as kubelet,
            FakePodResourcesServer(root / "pr.sock"),
            _agent(argv, env) as proc,
        ):

            def ready() -> bool:
                with contextlib.suppress(Exception):
                    devices = kubelet.devices(RESOURCE_NAME)
                    return len(devices) == n and all(d.healthy for d in devices)
                return False

            took = _wait(ready, proc, 600)
            time.sleep(settle)  # the agent's steady state: nothing to synchronise with
            rss, hwm, threads = _status(proc.pid)
    return {"ready": took, "rss": rss, "hwm": hwm, "threads": threads}


def dra_driver(emu: Emulator, n: int, env: dict[str, str], settle: float) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="memb-", dir="/tmp") as tmp,
        NodeApi(NODE, LABELS, slices=True) as api,
    ):
        root = Path(tmp)
        _layout(root, emu, n, api)
        argv = [
            "dra-plugin",
            "--node-name", NODE,
            "--config", str(root / "backends.yaml"),
            "--config-map", "/".join(CONFIG_MAP),
            "--credentials-dir", str(root / "creds"),
            "--plugins-dir", str(root / "plugins"),
            "--registry-dir", str(root / "registry"),
            "--cdi-dir", str(root / "cdi"),
            "--state-dir", str(root / "state"),
            "--boot-id-file", str(root / "boot_id"),
            "--kubeconfig", str(api.kubeconfig(root / "kubeconfig")),
            "--metrics-address", "127.0.0.1:0",
            "--log-level", "info",
        ]  # fmt: skip
        with _agent(argv, env) as proc:

            def ready() -> bool:
                devices = [d for s in api.slices() for d in s["spec"].get("devices") or []]
                calibrated = [
                    d for d in devices if d["name"].startswith(CALIBRATED) and "t1Us" in str(d)
                ]
                return len(devices) == n and bool(calibrated)

            took = _wait(ready, proc, 600)
            time.sleep(settle)  # the agent's steady state: nothing to synchronise with
            rss, hwm, threads = _status(proc.pid)
    return {"ready": took, "rss": rss, "hwm": hwm, "threads": threads}


# The agents' code, loaded and not started: the floor below which no change to our own
# runtime data goes (the device plugin's, and the DRA driver's with the APIs it calls).
FLOORS = {
    "device plugin": ["qpu_k8s.deviceplugin.agent"],
    "DRA": ["qpu_k8s.dra.agent", "kubernetes.client.api.custom_objects_api"],
}


def imports_floor(modules: list[str], env: dict[str, str]) -> dict[str, float]:
    """RSS (and its anonymous part) of a light-stack process that only imports ``modules``."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.lightstack", "--imports", *modules],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    got: dict[str, float] = json.loads(out)
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after ready")
    args = parser.parse_args(argv)
    heading("Node agents: resident memory")
    envs = {"device plugin": chart_env("device-plugin"), "DRA": chart_env("dra")}
    rows = []
    results: dict[str, list[tuple[int, dict[str, float]]]] = {"device plugin": [], "DRA": []}
    with running_emulator(noise=False) as emu:
        for n in sorted(args.levels):
            for name, run in (("device plugin", device_plugin), ("DRA", dra_driver)):
                got = run(emu, n, envs[name], args.settle)
                results[name].append((n, got))
                rows.append(
                    (name, n, f"{got['rss']:.1f} MiB", f"{got['hwm']:.1f} MiB",
                     int(got["threads"]), f"{got['ready']:.1f} s")
                )  # fmt: skip
    print(f"Environment from the chart: {envs}; the first backend is fake_torino.\n")
    print(table(["agent", "backends", "RSS", "peak RSS", "threads", "ready after"], rows))
    floors = {name: imports_floor(mods, envs[name]) for name, mods in FLOORS.items()}
    print(
        "\nThe floor, the agent's modules imported and nothing started: "
        + "; ".join(
            f"{name} {f['rss']:.1f} MiB ({f['rss'] - f['anon']:.1f} MiB of it shared library "
            f"code: grpc, qrmi, libpython, pydantic-core, OpenSSL...)"
            for name, f in floors.items()
        )
        + "."
    )
    checks = []
    for name, runs in results.items():
        n, last = runs[-1]
        worst = max(r["hwm"] for _, r in runs)
        checks.append(
            Target(
                f"memory: {name} with {n} backends and the 133-qubit calibration",
                f"{last['rss']:.1f} MiB (peak {worst:.1f} MiB)",
                f"<= {LIMIT_MIB:g} MiB",
                last["rss"] <= LIMIT_MIB,
            )
        )
    targets(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
