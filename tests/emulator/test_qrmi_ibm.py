"""The real qrmi client (IBM Qiskit Runtime types) against the emulator."""

from __future__ import annotations

import json

import pytest
import qrmi

from qpu_k8s.emulator import Emulator, JobStatus, SessionState
from testsupport.emulator import bell_isa, qrmi_resource
from testsupport.emulator import sampler_payload as isa_sampler_payload


def sampler_payload(backend_name: str, emu: Emulator, shots: int = 400) -> qrmi.Payload:
    """A Sampler V2 input as qrmi.primitives builds it (OpenQASM 3 pubs)."""
    from qrmi.primitives.ibm import get_backend

    return isa_sampler_payload(bell_isa(get_backend(qrmi_resource(emu, backend_name))), shots)


def test_status_target_metadata(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_nairobi")
    status = res.status()
    assert status.status == qrmi.ResourceStatusCode.Online
    assert status.pending_job_count == 0
    target = json.loads(res.target().value)
    assert target["configuration"]["n_qubits"] == 7
    assert target["configuration"]["backend_name"] == "fake_nairobi"
    # Real calibration data: T1 of qubit 0 and a readout error, as quality figures need.
    q0 = {p["name"]: p["value"] for p in target["properties"]["qubits"][0]}
    assert q0["T1"] > 0
    assert 0 < q0["readout_error"] < 0.5
    assert res.metadata() == {"backend_name": "fake_nairobi"}


def test_large_backend_target(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_torino")
    target = json.loads(res.target().value)
    assert target["configuration"]["n_qubits"] == 133
    assert len(target["properties"]["qubits"]) == 133


def test_acquire_task_release_lifecycle(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila")
    payload = sampler_payload("fake_manila", emu)
    token = res.acquire()
    [session] = emu.state.open_sessions("fake_manila")
    assert session.id == token
    assert res.metadata()["session_id"] == token

    task = res.task_start(payload)
    assert emu.state.job(task) is not None
    assert emu.state.wait_until(lambda s: s.job(task).status.final, timeout=30)
    assert res.task_status(task) == qrmi.TaskStatus.Completed
    job = emu.state.job(task)
    assert job.session_id == token
    assert job.program == "sampler"

    from qiskit_ibm_runtime.decoders.result_decoder import ResultDecoder

    result = ResultDecoder.decode(res.task_result(task).value)
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == 400
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * 400

    res.release(token)
    [closed] = emu.state.sessions("fake_manila")
    assert closed.state == SessionState.CLOSED
    assert closed.closed_by == "release"
    assert emu.state.open_sessions() == []


def test_release_with_pending_job_cancels_session(emu: Emulator) -> None:
    emu.set_fault("job-delay", "fake_manila", seconds=30)
    res = qrmi_resource(emu, "fake_manila")
    token = res.acquire()
    task = res.task_start(sampler_payload("fake_manila", emu))
    assert emu.state.wait_until(lambda s: s.job(task).status == JobStatus.RUNNING, timeout=10)
    res.release(token)
    session = emu.state.session(token)
    assert session is not None
    assert session.state == SessionState.CLOSED
    assert session.closed_by == "cancel"
    assert emu.state.job(task).status == JobStatus.CANCELLED
    assert res.task_status(task) == qrmi.TaskStatus.Cancelled


def test_task_stop_cancels_running_job(emu: Emulator) -> None:
    emu.set_fault("job-delay", "fake_manila", seconds=30)
    res = qrmi_resource(emu, "fake_manila")
    task = res.task_start(sampler_payload("fake_manila", emu))
    assert res.task_status(task) in (qrmi.TaskStatus.Queued, qrmi.TaskStatus.Running)
    with pytest.raises(qrmi.TaskNotReadyError):
        res.task_result(task)
    res.task_stop(task)
    assert res.task_status(task) == qrmi.TaskStatus.Cancelled
    assert "cancelled" in res.task_logs(task)


def test_jobs_queue_one_at_a_time_per_backend(emu: Emulator) -> None:
    emu.set_fault("job-delay", "fake_manila", seconds=30)
    res = qrmi_resource(emu, "fake_manila")
    payload = sampler_payload("fake_manila", emu)
    first, second = res.task_start(payload), res.task_start(payload)
    assert emu.state.wait_until(lambda s: s.job(first).status == JobStatus.RUNNING, timeout=10)
    assert emu.state.job(second).status == JobStatus.QUEUED
    assert res.status().pending_job_count == 1  # the queue length the vendor reports
    res.task_stop(first)
    assert emu.state.wait_until(lambda s: s.job(second).status == JobStatus.RUNNING, timeout=10)


def test_failed_job_reports_reason(emu: Emulator) -> None:
    from qiskit import QuantumCircuit, qasm3

    qc = QuantumCircuit(2)
    qc.h(0)  # not an ISA circuit: 'h' is not a native gate
    qc.cx(0, 1)
    qc.measure_all()
    body = {"pubs": [[qasm3.dumps(qc), None, 10]], "shots": 10, "version": 2, "options": {}}
    res = qrmi_resource(emu, "fake_manila")
    task = res.task_start(
        qrmi.Payload.QiskitPrimitive(input=json.dumps(body), program_id="sampler")
    )
    assert emu.state.wait_until(lambda s: s.job(task).status.final, timeout=30)
    assert res.task_status(task) == qrmi.TaskStatus.Failed
    assert "not supported by the target" in (emu.state.job(task).error or "")


def test_wrong_api_key_is_an_auth_error(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila", QRMI_IBM_QCS_IAM_APIKEY="not-the-key")
    with pytest.raises(qrmi.AuthenticationFailedError):
        res.status()
    with pytest.raises(qrmi.AuthenticationFailedError):
        res.acquire()
    assert emu.state.open_sessions() == []


def test_wrong_service_crn_is_refused(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila", QRMI_IBM_QCS_SERVICE_CRN="crn:v1:someone-else")
    with pytest.raises(qrmi.QrmiError, match="403"):
        res.acquire()


def test_unknown_backend_is_not_found(emu: Emulator) -> None:
    config = emu.qrmi_config("fake_manila")
    res = qrmi.QuantumResource.from_config(
        "fake_nowhere", qrmi.ResourceType.IBMQuantumComputeService, config
    )
    with pytest.raises(qrmi.ResourceNotFoundError):
        res.status()


def test_qiskit_runtime_service_type(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_lagos", "qiskit-runtime-service")
    assert res.status().status == qrmi.ResourceStatusCode.Online
    token = res.acquire()
    assert [s.id for s in emu.state.open_sessions("fake_lagos")] == [token]
    res.release(token)
    assert emu.state.open_sessions() == []


def test_preset_acquisition_token_reuses_session(emu: Emulator) -> None:
    first = qrmi_resource(emu, "fake_manila")
    token = first.acquire()
    second = qrmi_resource(emu, "fake_manila", QRMI_JOB_ACQUISITION_TOKEN=token)
    assert second.acquire() == token
    assert len(emu.state.sessions()) == 1
    first.release(token)
    assert emu.state.open_sessions() == []


def test_samplerv2_and_estimatorv2_primitives(emu: Emulator) -> None:
    from qiskit.quantum_info import SparsePauliOp
    from qrmi.primitives.ibm import EstimatorV2, SamplerV2, get_backend

    res = qrmi_resource(emu, "fake_nairobi")
    backend = get_backend(res)
    job = SamplerV2(res, options={"default_shots": 500}).run([bell_isa(backend)])
    counts = job.result()[0].data.meas.get_counts()
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * 500

    isa = bell_isa(backend, measure=False)
    zz = SparsePauliOp("ZZ").apply_layout(isa.layout)
    xx = SparsePauliOp("XX").apply_layout(isa.layout)
    result = EstimatorV2(res).run([(isa, [zz, xx])], precision=0.02).result()
    evs = list(result[0].data.evs)
    assert evs[0] > 0.75
    assert evs[1] > 0.75


def test_resource_provider_discovers_the_catalogue(emu: Emulator) -> None:
    provider = qrmi.ResourceProvider(
        qrmi.ResourceType.IBMQuantumComputeService, emu.qrmi_config("fake_manila")
    )
    names = [r.resource_id() for r in provider.resources()]
    assert names == ["fake_manila", "fake_nairobi", "fake_lagos", "fake_torino"]
