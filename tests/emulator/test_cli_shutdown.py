"""``qpu-k8s emulator`` as a process: SIGTERM (and SIGKILL) during a running simulation.

The job is a real minutes-long simulation in a worker process. The emulator must exit
promptly whatever runs, and leave no worker or fork-server process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import qrmi

from qpu_k8s.emulator import EmulatorClient
from qpu_k8s.emulator.config import EmulatorConfig
from testsupport.emulator import long_job_circuit, sampler_input
from testsupport.waiting import wait_for

# Generous on a loaded 2-core machine; the benchmark measures the real figure (< 1 s).
EXIT_DEADLINE_SECONDS = 10


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], EmulatorClient]]:
    ready = tmp_path / "port"
    env = {**os.environ, "QPU_K8S_EMULATOR_MAX_EXACT_QUBITS": "11"}  # the env fallback
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qpu_k8s.emulator",
            "--ready-file",
            str(ready),
            "--backend",
            "fake_torino",
            "--log-level",
            "WARNING",
        ],
        env=env,
    )
    port = int(wait_for(lambda: ready.exists() and ready.read_text().strip(), timeout=60))
    client = EmulatorClient(f"http://127.0.0.1:{port}", EmulatorConfig(backends=("fake_torino",)))
    yield proc, client
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _health(client: EmulatorClient) -> dict[str, Any]:
    with urllib.request.urlopen(f"{client.url}/_emulator/health", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def _start_long_job(proc: subprocess.Popen[bytes], client: EmulatorClient) -> list[Any]:
    """Submit the long job; return the emulator's descendants once a worker runs it."""
    wait_for(lambda: _health(client)["workers_ready"], timeout=120)
    res = qrmi.QuantumResource.from_config(
        "fake_torino", qrmi.ResourceType.IBMQuantumComputeService, client.qrmi_config("fake_torino")
    )
    payload = sampler_input(long_job_circuit(), 10000)
    task = res.task_start(qrmi.Payload.QiskitPrimitive(input=payload, program_id="sampler"))
    wait_for(lambda: _health(client)["running_jobs"] == 1, timeout=60)
    [job] = [j for j in client.jobs() if j["id"] == task]
    assert job["status"] == "running"
    # The fork server and the job's worker process, at least.
    return wait_for(
        lambda: (
            (kids := psutil.Process(proc.pid).children(recursive=True)) and len(kids) >= 2 and kids
        ),
        timeout=30,
    )


def test_sigterm_during_a_simulation_exits_promptly_without_orphans(
    emulator_process: tuple[subprocess.Popen[bytes], EmulatorClient],
) -> None:
    proc, client = emulator_process
    descendants = _start_long_job(proc, client)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(EXIT_DEADLINE_SECONDS) == 0
    _, alive = psutil.wait_procs(descendants, timeout=EXIT_DEADLINE_SECONDS)
    assert alive == [], f"orphaned processes: {alive}"


def test_sigkill_of_the_emulator_leaves_no_worker(
    emulator_process: tuple[subprocess.Popen[bytes], EmulatorClient],
) -> None:
    proc, client = emulator_process
    descendants = _start_long_job(proc, client)
    proc.kill()  # no chance to clean up: the fork server and its children must still go
    proc.wait(EXIT_DEADLINE_SECONDS)
    _, alive = psutil.wait_procs(descendants, timeout=EXIT_DEADLINE_SECONDS)
    assert alive == [], f"orphaned processes: {alive}"
