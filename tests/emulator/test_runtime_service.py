"""The real qiskit-ibm-runtime ``QiskitRuntimeService`` against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qpu_k8s.emulator import Emulator, JobStatus, SessionState
from testsupport.emulator import bell_isa

# SamplerV2/EstimatorV2 are deprecated since qiskit-ibm-runtime 0.50 and tested on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def service(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in emu.runtime_service_env().items():
        monkeypatch.setenv(key, value)
    from qiskit_ibm_runtime import QiskitRuntimeService

    return QiskitRuntimeService(**emu.runtime_service_kwargs())


def test_backends_and_calibration(service: Any) -> None:
    assert {b.name for b in service.backends()} == {
        "fake_manila",
        "fake_nairobi",
        "fake_lagos",
        "fake_torino",
    }
    backend = service.backend("fake_torino")
    assert backend.num_qubits == 133
    assert backend.status().operational
    assert backend.properties().t1(0) > 0
    assert backend.target.instruction_supported("cz", (0, 1))


def test_session_mode_sampler_and_estimator(emu: Emulator, service: Any) -> None:
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_ibm_runtime import EstimatorV2, SamplerV2, Session

    backend = service.backend("fake_manila")
    with Session(backend=backend) as session:
        [opened] = emu.state.open_sessions("fake_manila")
        assert opened.id == session.session_id
        counts = SamplerV2(mode=session).run([bell_isa(backend)], shots=600).result()[0]
        counts = counts.data.meas.get_counts()
        isa = bell_isa(backend, measure=False)
        zz = SparsePauliOp("ZZ").apply_layout(isa.layout)
        evs = EstimatorV2(mode=session).run([(isa, zz)]).result()[0].data.evs
    assert sum(counts.values()) == 600
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * 600
    assert float(evs) > 0.75
    [closed] = emu.state.sessions("fake_manila")
    assert closed.state == SessionState.CLOSED
    assert closed.closed_by == "release"
    jobs = emu.state.jobs(session_id=closed.id)
    assert sorted(j.program for j in jobs) == ["estimator", "sampler"]
    assert all(j.status == JobStatus.COMPLETED for j in jobs)


def test_job_mode_and_failed_job_message(emu: Emulator, service: Any) -> None:
    from qiskit import QuantumCircuit
    from qiskit_ibm_runtime import SamplerV2
    from qiskit_ibm_runtime.exceptions import RuntimeJobFailureError

    backend = service.backend("fake_nairobi")
    job = SamplerV2(mode=backend).run([bell_isa(backend)], shots=200)
    assert sum(job.result()[0].data.meas.get_counts().values()) == 200
    assert emu.state.job(job.job_id()).session_id is None

    emu.set_fault("job-fail", "fake_nairobi", reason="cryostat warming up")
    qc = QuantumCircuit(1)
    qc.measure_all()
    failing = SamplerV2(mode=backend).run([qc], shots=10)
    with pytest.raises(RuntimeJobFailureError, match="cryostat warming up"):
        failing.result()


def test_client_side_executor_primitives(emu: Emulator, service: Any) -> None:
    """qiskit-ibm-runtime >= 0.50's replacements for SamplerV2/EstimatorV2 (program 'executor')."""
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_ibm_runtime import Session
    from qiskit_ibm_runtime.executor_estimator import Estimator
    from qiskit_ibm_runtime.executor_sampler import Sampler

    backend = service.backend("fake_manila")
    counts = Sampler(mode=backend).run([bell_isa(backend)], shots=500).result()[0]
    counts = counts.data.meas.get_counts()
    assert sum(counts.values()) == 500
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * 500
    isa = bell_isa(backend, measure=False)
    with Session(backend=backend) as session:
        evs = Estimator(mode=session).run([(isa, SparsePauliOp("ZZ").apply_layout(isa.layout))])
        zz = float(evs.result()[0].data.evs)
    assert zz > 0.8
    assert {j.program for j in emu.state.jobs()} == {"executor"}


def test_pause_knob_as_each_vendor_client_sees_it(emu: Emulator, service: Any) -> None:
    """The admin API's pause/resume, read by qiskit-ibm-runtime, qrmi and Pasqal's API."""
    import json
    import urllib.request

    import qrmi

    from qpu_k8s.emulator.client import EmulatorClient
    from testsupport.emulator import qrmi_resource

    admin = EmulatorClient(emu.url, emu.config)
    admin.pause("fake_torino", "cryostat warm-up, back at 14:00 UTC")
    admin.pause("FRESNEL", "laser recalibration")
    try:
        status = service.backend("fake_torino").status()
        assert (status.operational, status.status_msg) == (False, "paused")
        st = qrmi_resource(emu, "fake_torino").status()
        assert st.status == qrmi.ResourceStatusCode.Paused
        assert st.status_reason == "cryostat warm-up, back at 14:00 UTC"
        assert qrmi_resource(emu, "FRESNEL").status().status != qrmi.ResourceStatusCode.Online
        url = f"{emu.url}/core-fast/api/v1/devices?device_type=FRESNEL"
        with urllib.request.urlopen(url, timeout=10) as resp:
            (device,) = json.loads(resp.read())["data"]
        assert (device["status"], device["availability"]) == ("MAINTENANCE", "INACTIVE")
        assert device["status_reason"] == "laser recalibration"
        with pytest.raises(RuntimeError, match="'reason' must be a string"):
            admin._call("POST", "/backends/fake_torino/pause", {"reason": 7})
        with pytest.raises(RuntimeError, match="404"):
            admin.pause("fake_nowhere", "x")
    finally:
        admin.resume("fake_torino")
        admin.resume("FRESNEL")
    assert service.backend("fake_torino").status().operational
    assert qrmi_resource(emu, "FRESNEL").status().status == qrmi.ResourceStatusCode.Online
