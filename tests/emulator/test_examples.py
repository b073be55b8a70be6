"""The example pod scripts, run unchanged in a child process under the QRMI env contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from qpu_k8s.cli.demo import EXAMPLES
from qpu_k8s.emulator import Emulator, SessionState
from testsupport.emulator import qrmi_resource


def run_example(script: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_qiskit_bell_in_the_acquired_session(emu: Emulator) -> None:
    # The scheduler's part: acquire, hand the token to the pod, release afterwards.
    res = qrmi_resource(emu, "fake_manila")
    token = res.acquire()
    env = emu.job_env(["fake_manila"], acquisition_tokens={"fake_manila": token})
    out = run_example("qiskit_bell.py", env, "--shots", "1000")
    res.release(token)

    counts = out["counts"]
    assert out["resource"] == "fake_manila"
    assert sum(counts.values()) == 1000
    assert counts.get("00", 0) + counts.get("11", 0) > 850
    assert min(counts.get("00", 0), counts.get("11", 0)) > 350
    job = emu.state.job(out["job_id"])
    assert job is not None
    assert job.session_id == token
    [session] = emu.state.sessions()
    assert session.state == SessionState.CLOSED


def test_pulser_bell(emu: Emulator) -> None:
    out = run_example("pulser_bell.py", emu.job_env(["FRESNEL"]), "--runs", "500")
    counts = out["counts"]
    assert out["resource"] == "FRESNEL"
    assert sum(counts.values()) == 500
    assert counts.get("01", 0) + counts.get("10", 0) > 450
    assert min(counts.get("01", 0), counts.get("10", 0)) > 150


def test_qiskit_estimator(emu: Emulator) -> None:
    out = run_example("qiskit_estimator.py", emu.job_env(["fake_nairobi"]))
    assert out["resource"] == "fake_nairobi"
    assert 0.75 < out["evs"]["ZZ"] <= 1.05
    assert 0.75 < out["evs"]["XX"] <= 1.05
    [job] = emu.state.jobs()
    assert job.program == "estimator"


def test_qiskit_executor_program_through_qrmi(emu: Emulator) -> None:
    """qrmi 0.26 routes the ``executor`` program the client-side primitives use."""
    out = run_example("qiskit_executor.py", emu.job_env(["fake_manila"]), "--shots", "800")
    counts = out["counts"]
    assert sum(counts.values()) == 800
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * 800
    job = emu.state.job(out["job_id"])
    assert job is not None
    assert job.program == "executor"
