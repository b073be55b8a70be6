"""Jobs in worker processes: cancel, time limit, responsive APIs, bounded queues, reasons.

The long job is a real simulation (an 11-qubit noisy density-matrix run of thousands of
gates, minutes of CPU), not an injected delay: these tests show that the process doing
the work is what gets killed.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import qrmi

from qpu_k8s.emulator import Emulator, JobStatus, running_emulator
from testsupport.emulator import Call, bell_isa, long_job_circuit, qrmi_resource, sampler_input
from testsupport.waiting import wait_for

# SamplerV2 of qiskit-ibm-runtime is deprecated since 0.50 and used on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def long_circuit() -> Any:
    return long_job_circuit()


@pytest.fixture(scope="module")
def exact11() -> Iterator[Emulator]:
    """An emulator that simulates 11-qubit circuits exactly (the long job's path)."""
    with running_emulator(max_exact_qubits=11, max_queued_jobs=2) as emu:
        assert emu.workers_ready(120)
        yield emu


@pytest.fixture
def emu11(exact11: Emulator) -> Iterator[Emulator]:
    yield exact11
    exact11.reset()


def start_long_job(emu: Emulator, circuit: Any, **overrides: str) -> tuple[Any, str, int]:
    """Submit the long job through qrmi; wait until a worker process is running it."""
    res = qrmi_resource(emu, "fake_torino", **overrides)
    payload = qrmi.Payload.QiskitPrimitive(
        input=sampler_input(circuit, 10000), program_id="sampler"
    )
    task = res.task_start(payload)
    assert emu.state.wait_until(lambda s: s.job(task).status == JobStatus.RUNNING, timeout=60)
    [pid] = wait_for(emu.worker_pids, timeout=60)
    return res, task, pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_kills_the_running_simulation(emu11: Emulator, long_circuit: Any) -> None:
    res, task, pid = start_long_job(emu11, long_circuit)
    assert psutil.Process(pid).is_running()
    res.task_stop(task)  # qrmi: GET the job, then POST /jobs/{id}/cancel
    assert res.task_status(task) == qrmi.TaskStatus.Cancelled
    wait_for(lambda: gone(pid), timeout=10)
    assert emu11.worker_pids() == []
    assert "job cancelled" in res.task_logs(task)
    # The backend is free again: the next job runs (and is not blocked by the killed one).
    quick = res.task_start(
        qrmi.Payload.QiskitPrimitive(
            input=sampler_input(bell_isa(_torino()), 100), program_id="sampler"
        )
    )
    assert emu11.state.wait_until(lambda s: s.job(quick).status.final, timeout=60)
    assert emu11.state.job(quick).status == JobStatus.COMPLETED  # type: ignore[union-attr]


def test_apis_answer_while_a_simulation_runs(emu11: Emulator, long_circuit: Any) -> None:
    res, task, pid = start_long_job(emu11, long_circuit)
    # The vendor API and the admin API both answer while the worker computes (the latency
    # target, 100 ms, is measured by benchmarks/emulator_bench.py, not asserted here).
    assert res.status().status == qrmi.ResourceStatusCode.Online
    assert res.task_status(task) == qrmi.TaskStatus.Running
    with urllib.request.urlopen(f"{emu11.url}/_emulator/health", timeout=5) as resp:
        health = json.loads(resp.read())
    assert health["running_jobs"] == 1
    assert psutil.Process(pid).cpu_percent(interval=0.5) > 0  # it really is working
    res.task_stop(task)
    wait_for(lambda: gone(pid), timeout=10)


def test_time_limit_kills_and_reports_ran_too_long(emu11: Emulator, long_circuit: Any) -> None:
    # qrmi sends QRMI_IBM_QCS_TIMEOUT_SECONDS as the job's ``cost``: the job's own limit.
    res, task, pid = start_long_job(emu11, long_circuit, QRMI_IBM_QCS_TIMEOUT_SECONDS="2")
    assert emu11.state.wait_until(lambda s: s.job(task).status.final, timeout=60)
    job = emu11.state.job(task)
    assert job is not None
    assert job.status == JobStatus.TIMED_OUT
    assert job.reason_code == 1305
    wait_for(lambda: gone(pid), timeout=10)
    # qrmi 0.26 maps "Cancelled - Ran too long" to Cancelled; the reason is in the logs.
    assert res.task_status(task) == qrmi.TaskStatus.Cancelled
    with pytest.raises(qrmi.TaskNotReadyError, match="RanTooLong"):
        res.task_result(task)
    assert "maximum execution time (2 s)" in res.task_logs(task)


def test_time_limit_through_qiskit_ibm_runtime(
    emu11: Emulator, long_circuit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in emu11.runtime_service_env().items():
        monkeypatch.setenv(key, value)
    from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
    from qiskit_ibm_runtime.exceptions import RuntimeJobMaxTimeoutError

    backend = QiskitRuntimeService(**emu11.runtime_service_kwargs()).backend("fake_torino")
    sampler = SamplerV2(mode=backend, options={"max_execution_time": 2})
    job = sampler.run([long_circuit], shots=10000)
    with pytest.raises(RuntimeJobMaxTimeoutError, match="maximum execution time"):
        job.result(timeout=120)
    assert emu11.worker_pids() == []


def test_queue_is_bounded_like_a_qpu(emu11: Emulator, long_circuit: Any) -> None:
    res, running, pid = start_long_job(emu11, long_circuit)
    payload = qrmi.Payload.QiskitPrimitive(
        input=sampler_input(long_circuit, 10), program_id="sampler"
    )
    queued = [res.task_start(payload), res.task_start(payload)]  # max_queued_jobs=2
    assert all(emu11.state.job(t).status == JobStatus.QUEUED for t in queued)  # type: ignore[union-attr]
    assert res.status().pending_job_count == 2
    with pytest.raises(qrmi.QrmiError, match="queue of fake_torino is full"):
        res.task_start(payload)
    for task in [running, *queued]:
        res.task_stop(task)
    wait_for(lambda: gone(pid), timeout=10)


def test_stopping_the_emulator_kills_its_workers(long_circuit: Any) -> None:
    with running_emulator(max_exact_qubits=11) as emu:
        _, _, pid = start_long_job(emu, long_circuit)
    wait_for(lambda: gone(pid), timeout=10)


# ---- a refused job's reason reaches the client ------------------------------------------
def test_refused_at_submission_qrmi_shows_the_reason() -> None:
    with running_emulator(max_shots=1000) as emu:
        res = qrmi_resource(emu, "fake_manila")
        payload = qrmi.Payload.QiskitPrimitive(
            input=sampler_input(bell_isa(_manila()), 5000), program_id="sampler"
        )
        with pytest.raises(
            qrmi.QrmiError, match=r"shots requested \(5000\) exceeds the maximum of 1000"
        ):
            res.task_start(payload)
        assert emu.state.jobs() == []


def test_refused_job_qiskit_ibm_runtime_shows_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
    from qiskit_ibm_runtime.exceptions import IBMRuntimeError, RuntimeJobFailureError

    with running_emulator(max_sim_qubits=1, max_shots=1000) as emu:
        for key, value in emu.runtime_service_env().items():
            monkeypatch.setenv(key, value)
        backend = QiskitRuntimeService(**emu.runtime_service_kwargs()).backend("fake_manila")
        # Refused at submission (the shots are in the request): IBM's 400, raised by run().
        with pytest.raises(IBMRuntimeError, match=r"shots requested \(5000\) exceeds"):
            SamplerV2(mode=backend).run([bell_isa(backend)], shots=5000)
        # qiskit-ibm-runtime sends circuits as QPY, which the server does not parse: the
        # worker refuses the width and the reason is the job's state.reason, which
        # qiskit-ibm-runtime shows from result().
        job = SamplerV2(mode=backend).run([bell_isa(backend)], shots=100)
        with pytest.raises(RuntimeJobFailureError, match=r"acts on 2 qubits.*at most 1"):
            job.result(timeout=60)


def test_failed_job_reason_is_in_qrmi_logs_and_the_emulator_log(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    from qiskit import QuantumCircuit

    caplog.set_level("INFO", logger="qpu_k8s.emulator")
    qc = QuantumCircuit(2)
    qc.h(0)  # 'h' is not native: not an ISA circuit
    qc.measure_all()
    res = qrmi_resource(emu, "fake_manila")
    task = res.task_start(
        qrmi.Payload.QiskitPrimitive(input=sampler_input(qc, 10), program_id="sampler")
    )
    assert emu.state.wait_until(lambda s: s.job(task).status.final, timeout=60)
    assert res.task_status(task) == qrmi.TaskStatus.Failed
    # qrmi 0.26 raises TaskNotReadyError("... current status: Failed") without the reason;
    # task_logs (GET /jobs/{id}/logs) and the emulator's own log carry it.
    with pytest.raises(qrmi.TaskNotReadyError, match="Failed"):
        res.task_result(task)
    assert "instruction h on qubits (0,) is not supported" in res.task_logs(task)
    assert any(task in r.getMessage() and "not supported" in r.getMessage() for r in caplog.records)


def test_worker_crash_fails_the_job(emu11: Emulator, long_circuit: Any) -> None:
    """A worker that dies without answering (OOM killer, segfault) fails its job."""
    res, task, pid = start_long_job(emu11, long_circuit)
    os.kill(pid, signal.SIGKILL)
    assert emu11.state.wait_until(lambda s: s.job(task).status.final, timeout=30)
    assert res.task_status(task) == qrmi.TaskStatus.Failed
    assert "ended without a result" in res.task_logs(task)


def test_hang_free_shutdown_while_polling(long_circuit: Any) -> None:
    """A client polling a running job does not delay the emulator's stop."""
    with running_emulator(max_exact_qubits=11, settle_seconds=30) as emu:
        res, task, _ = start_long_job(emu, long_circuit)
        poll = Call(lambda: res.task_status(task))  # waits in the server's settle
        assert not poll.wait(0.3)
    assert poll.wait(10)


def _torino() -> Any:
    from qiskit_ibm_runtime.fake_provider import FakeTorino

    return FakeTorino()


def _manila() -> Any:
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    return FakeManilaV2()
