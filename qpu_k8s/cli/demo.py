"""``qpu-k8s demo``: the paper's QPU lifecycle end to end, offline, on the local emulator.

By default every step goes through the device plugin, as on a node: the emulator stands in
for the vendors' clouds, an in-repo fake kubelet registers the plugin, "schedules" a pod on
one QPU lane, calls Allocate (QRMI acquire → env contract), runs the paper's example script
in a child process with exactly that environment, then ends the pod so the plugin releases
the session. ``--via qrmi`` shows the bare lifecycle instead: acquire, run, release through
the QRMI adapter, the way the paper's Slurm plugin does it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from qpu_k8s.core.model import QuantumBackend, dump_backend_config, parse_backend

if TYPE_CHECKING:
    from qpu_k8s.emulator import Emulator

# Package data: the paper's pod scripts ship inside the package, so an installed demo has them.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IBM_BACKEND = "fake_manila"
PASQAL_BACKEND = "FRESNEL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--via",
        choices=("device-plugin", "qrmi"),
        default="device-plugin",
        help="device-plugin: a pod on a node (default); qrmi: the bare acquire/run/release",
    )
    parser.add_argument("--skip-pulser", action="store_true", help="only run the Qiskit example")
    parser.add_argument(
        "--examples-dir", type=Path, default=EXAMPLES, help="where the example pod scripts are"
    )
    parser.add_argument(
        "--noise",
        action="store_true",
        help="simulate with the fake backend's noise model (default: ideal, exact 00/11 only)",
    )


def demo_backends(emu: Emulator) -> list[QuantumBackend]:
    """Two QuantumBackends on the emulator: an IBM Runtime backend and a Pasqal device."""
    ibm_cfg = {k: v for k, v in emu.ibm_config(IBM_BACKEND).items()}
    pasqal_cfg = {k: v for k, v in emu.pasqal_config(PASQAL_BACKEND).items()}
    return [
        parse_backend(
            {
                "name": "fake-manila",
                "spec": {
                    "resourceId": IBM_BACKEND,
                    "type": "ibm-quantum-compute-service",
                    "config": ibm_cfg,
                    "credentialsSecretRef": {"name": "emulator-ibm"},
                    "lanes": 2,
                    "probeIntervalSeconds": 5,
                },
            },
            "demo",
        ),
        parse_backend(
            {
                "name": "fresnel",
                "spec": {
                    "resourceId": PASQAL_BACKEND,
                    "type": "pasqal-cloud",
                    "config": pasqal_cfg,
                    "credentialsSecretRef": {"name": "emulator-pasqal"},
                    "probeIntervalSeconds": 5,
                },
            },
            "demo",
        ),
    ]


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _summarise_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in top)


def _via_device_plugin(
    emu: Emulator,
    backends: list[QuantumBackend],
    workdir: Path,
    jobs: list[tuple[str, Path]],
    out: TextIO,
) -> list[dict[str, Any]]:
    from qpu_k8s.cli.demo_deviceplugin import run_device_plugin_flow

    config = workdir / "backends.yaml"
    config.write_text(dump_backend_config(backends))
    results = []
    for i, (backend, script) in enumerate(jobs):
        print(f"\n=== pod {i + 1}: {script.name} on a {backend} lane ===", file=out, flush=True)
        flow = run_device_plugin_flow(
            emu, config, workdir / f"node{i}", script, out, backend=backend
        )
        results.append(
            {
                "script": script.name,
                "returncode": flow.script_returncode,
                "output": _last_json(flow.script_stdout),
                "session": flow.token,
                "released": flow.released,
                "closed_by": flow.session_closed_by,
            }
        )
    return results


def _via_qrmi(
    emu: Emulator, backends: list[QuantumBackend], jobs: list[tuple[str, Path]], out: TextIO
) -> list[dict[str, Any]]:
    from qpu_k8s.core.envcontract import Grant, render
    from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient

    by_name = {b.name: b for b in backends}
    results = []
    for backend_name, script in jobs:
        backend = by_name[backend_name]
        is_ibm = backend.spec.type.value.startswith("ibm")
        creds = emu.ibm_credentials() if is_ibm else emu.pasqal_credentials()
        client = QrmiClient(backend, creds, timeouts=CallTimeouts.uniform(30))
        print(f"\n=== {script.name} on {backend.spec.resource_id} ===", file=out, flush=True)
        health = client.health()
        print(f"[qrmi] status: {health.status} (healthy={health.healthy})", file=out, flush=True)
        token = client.acquire()
        print(f"[qrmi] acquire → token {token}", file=out, flush=True)
        try:
            job = render([Grant(backend, token, creds)])
            print("[scheduler] job environment (credentials hidden):", file=out)
            for k, v in sorted(job.public().items()):
                print(f"    {k}={v}", file=out)
            base = {k: v for k, v in os.environ.items() if "QRMI" not in k}
            proc = subprocess.run(
                [sys.executable, str(script)],
                env={**base, **job.env},
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            print(f"[job] exit {proc.returncode}: {proc.stdout.strip()[-300:]}", file=out)
            if proc.returncode:
                print(proc.stderr[-2000:], file=out)
        finally:
            client.release(token)
            print(f"[qrmi] release({token})", file=out, flush=True)
        session = emu.state.session(token)
        results.append(
            {
                "script": script.name,
                "returncode": proc.returncode,
                "output": _last_json(proc.stdout),
                "session": token,
                "released": True,
                "closed_by": session.closed_by if session else None,
            }
        )
    return results


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from qpu_k8s.core import logs
    from qpu_k8s.emulator import running_emulator

    logs.setup("warning", "text")
    started = time.perf_counter()
    jobs = [("fake-manila", args.examples_dir / "qiskit_bell.py")]
    if not args.skip_pulser:
        jobs.append(("fresnel", args.examples_dir / "pulser_bell.py"))
    missing = [str(s) for _, s in jobs if not s.exists()]
    if missing:
        print(f"example scripts not found: {', '.join(missing)} (use --examples-dir)", file=out)
        return 2
    print("qpu-k8s demo: acquire → run primitives → release, offline", file=out)
    with (
        running_emulator(noise=args.noise) as emu,
        tempfile.TemporaryDirectory(prefix="qpu-demo-") as tmp,
    ):
        print(
            f"[emulator] IBM Qiskit Runtime + Pasqal Cloud APIs on {emu.url} "
            f"(simulators: qiskit-aer, pulser-simulation)",
            file=out,
            flush=True,
        )
        backends = demo_backends(emu)
        if args.via == "device-plugin":
            results = _via_device_plugin(emu, backends, Path(tmp), jobs, out)
        else:
            results = _via_qrmi(emu, backends, jobs, out)
        still_open = emu.state.open_sessions()
    print("\n=== summary ===", file=out)
    ok = True
    for r in results:
        counts = r["output"].get("counts") or {}
        good = r["returncode"] == 0 and bool(counts) and r["released"]
        ok &= good
        print(
            f"{r['script']}: {'ok' if good else 'FAILED'}; counts {_summarise_counts(counts)}; "
            f"session {r['session']} released"
            + (f" (closed by {r['closed_by']})" if r["closed_by"] else ""),
            file=out,
        )
    print(f"sessions still open at the emulator: {len(still_open)}", file=out)
    print(f"wall time: {time.perf_counter() - started:.1f} s", file=out)
    return 0 if ok and not still_open else 1
