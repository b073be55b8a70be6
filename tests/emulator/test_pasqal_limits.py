"""Pasqal jobs in worker processes: refusals, time limit and cancel, seen through qrmi and
the pasqal-cloud SDK. The long job is a real qutip simulation of 14-16 atoms."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
import qrmi

from qpu_k8s.emulator import Emulator, JobStatus, running_emulator
from testsupport.emulator import pasqal_cloud_client, qrmi_resource
from testsupport.waiting import wait_for


def atoms_sequence(n: int, duration: int = 6000, layout: bool = True) -> str:
    from pulser import Pulse, Register, Sequence
    from pulser.devices import AnalogDevice

    register = Register.rectangle(2, n // 2, spacing=6, prefix="q")
    if layout:
        register = register.with_automatic_layout(AnalogDevice)
    seq = Sequence(register, AnalogDevice)
    seq.declare_channel("rydberg", "rydberg_global")
    seq.add(Pulse.ConstantPulse(duration, 2, 0, 0), "rydberg")
    seq.measure("ground-rydberg")
    text: str = seq.to_abstract_repr()
    return text


@pytest.fixture(scope="module")
def big() -> Iterator[Emulator]:
    """Up to 16 atoms (a qutip run of tens of seconds), jobs killed after 1 s."""
    with running_emulator(max_sim_atoms=16, max_job_seconds=1.0) as emu:
        assert emu.workers_ready(120)
        yield emu


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_refused_at_submission_with_the_reason(emu: Emulator) -> None:
    fresnel = qrmi_resource(emu, "FRESNEL")
    no_layout = qrmi.Payload.PasqalCloud(sequence=atoms_sequence(2, layout=False), job_runs=10)
    with pytest.raises(qrmi.QrmiError, match="requires the sequence's register to be defined"):
        fresnel.task_start(no_layout)
    too_big = qrmi.Payload.PasqalCloud(sequence=atoms_sequence(12), job_runs=10)
    with pytest.raises(qrmi.QrmiError, match="12 atoms; this emulator simulates at most 10"):
        qrmi_resource(emu, "EMU_MPS").task_start(too_big)
    assert emu.state.batches() == []


def test_time_limit(big: Emulator) -> None:
    res = qrmi_resource(big, "EMU_MPS")
    task = res.task_start(qrmi.Payload.PasqalCloud(sequence=atoms_sequence(14), job_runs=100))
    batch = big.state.batch(task)
    assert batch is not None
    assert big.state.wait_until(lambda s: s.job(batch.job_ids[0]).status.final, timeout=60)
    job = big.state.job(batch.job_ids[0])
    assert job is not None
    assert job.status == JobStatus.TIMED_OUT
    assert "maximum execution time (1 s)" in (job.error or "")
    # Failed in qrmi 0.26 (whose task_logs for Pasqal is a fixed string).
    assert res.task_status(task) == qrmi.TaskStatus.Failed
    big.reset()


def test_time_limit_in_the_pasqal_cloud_sdk(big: Emulator) -> None:
    client = pasqal_cloud_client(big)
    from pasqal_cloud.errors import BatchCreationError

    with pytest.raises(BatchCreationError, match="requires the sequence's register"):
        client.create_batch(
            atoms_sequence(2, layout=False), jobs=[{"runs": 5}], device_type="FRESNEL"
        )
    batch = client.create_batch(atoms_sequence(14), jobs=[{"runs": 50}], device_type="EMU_MPS")
    # ERROR, not Pasqal's TIMED_OUT, which qrmi 0.26 cannot parse; the reason says it.
    wait_for(lambda: client.get_batch(batch.id).status == "ERROR", timeout=60)
    [job] = client.get_batch(batch.id).ordered_jobs
    assert job.status == "ERROR"
    assert "maximum execution time" in " ".join(job.errors or [])
    big.reset()


def test_cancel_kills_the_running_simulation(big: Emulator) -> None:
    with running_emulator(max_sim_atoms=16) as emu:
        res = qrmi_resource(emu, "EMU_MPS")
        payload = qrmi.Payload.PasqalCloud(sequence=atoms_sequence(16), job_runs=100)
        task = res.task_start(payload)
        [pid] = wait_for(emu.worker_pids, timeout=60)
        assert res.task_status(task) == qrmi.TaskStatus.Running
        res.task_stop(task)  # PATCH .../batches/{id}/cancel
        assert res.task_status(task) == qrmi.TaskStatus.Cancelled
        wait_for(lambda: gone(pid), timeout=10)
