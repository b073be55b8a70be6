"""The paper's two example scripts, run unchanged (Qiskit) or minimally ported (Pulser),
in a child process under the same env contract a pod gets, against the emulator.

``qpu_k8s/examples/paper/README.md`` says where each script comes from and, for the Pulser one,
what had to change for qrmi 0.26 and pulser 1.9.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.cli.demo import EXAMPLES
from qpu_k8s.emulator import Emulator, JobStatus, SessionState
from testsupport.emulator import qrmi_resource

PAPER = EXAMPLES / "paper"


def run_script(script: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(PAPER / script)],
        env={**os.environ, **env},
        cwd=cwd,  # no stray .env file: load_dotenv() in the scripts finds nothing
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def last_dict(stdout: str, prefix: str) -> dict[str, Any]:
    [line] = [ln for ln in stdout.splitlines() if ln.startswith(prefix)]
    value: dict[str, Any] = ast.literal_eval(line[len(prefix) :].strip())
    return value


@pytest.mark.slow
def test_paper_qiskit_sampler_127_qubits_10000_shots(emu: Emulator, tmp_path: Path) -> None:
    # The scheduler's part (the device plugin / DRA driver): open a session, pass its token.
    res = qrmi_resource(emu, "fake_torino")
    token = res.acquire()
    env = emu.job_env(["fake_torino"], acquisition_tokens={"fake_torino": token})
    out = run_script("qiskit_sampler.py", env, tmp_path)
    res.release(token)

    counts = last_dict(out, "Counts for the 'meas' output register:")
    assert sum(counts.values()) == 10000
    assert {len(bits) for bits in counts} == {127}
    [job] = emu.state.jobs(vendor="ibm")
    assert job.status == JobStatus.COMPLETED
    assert job.session_id == token
    assert job.simulation is not None
    # 127 logical qubits; routing on the heavy-hex lattice may pass through an extra one.
    assert 127 <= job.simulation["qubits"] <= 133
    assert job.simulation["methods"] == ["matrix_product_state"]
    [session] = emu.state.sessions()
    assert session.state == SessionState.CLOSED


@pytest.mark.slow
def test_paper_pulser_on_fresnel(emu: Emulator, tmp_path: Path) -> None:
    out = run_script("pulser_backend.py", emu.job_env(["FRESNEL"]), tmp_path)
    counts = last_dict(out, "Results:")
    assert sum(counts.values()) == 1000
    assert {len(bits) for bits in counts} == {4}
    [batch] = emu.state.batches()
    assert batch.device_type == "FRESNEL"
    [job] = emu.state.jobs(vendor="pasqal")
    assert job.status == JobStatus.COMPLETED
    assert job.shots == 1000
