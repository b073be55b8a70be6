"""The simulation method choice and the fidelity model (docs/emulator.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import qrmi

from qpu_k8s.emulator import Emulator, JobStatus, calibration, fidelity, running_emulator
from testsupport.emulator import bell_isa, qrmi_resource, sampler_input

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- the model's pieces -----------------------------------------------------------------
def test_calibration_reads_asymmetric_readout_and_gate_errors() -> None:
    props = {
        "qubits": [
            [
                {"name": "readout_error", "value": 0.05},
                {"name": "prob_meas1_prep0", "value": 0.02},
                {"name": "prob_meas0_prep1", "value": 0.08},
            ],
            [{"name": "readout_error", "value": 0.9}],  # clamped: a readout worse than a coin
        ],
        "gates": [
            {"gate": "cz", "qubits": [0, 1], "parameters": [{"name": "gate_error", "value": 0.01}]},
            {"gate": "sx", "qubits": [0], "parameters": [{"name": "gate_error", "value": 0.001}]},
            {"gate": "cz", "qubits": [1, 2], "parameters": [{"name": "gate_error", "value": 1}]},
        ],
    }
    cal = calibration.from_properties(props)
    assert cal.readout == ((0.02, 0.08), (0.5, 0.5))
    assert cal.gate_error("cz", (1, 0)) == 0.01  # either direction of a coupler
    assert cal.gate_error("rz", (0,)) == 0.0  # virtual gates carry no error
    ops = [("sx", (0,)), ("cz", (0, 1)), ("measure", (0,)), ("rz", (0,))]
    assert cal.success_probability(ops) == pytest.approx(0.999 * 0.99)
    assert cal.success_probability([*ops, ("cz", (2, 1))]) == 0.0
    assert cal.failed_gates([*ops, ("cz", (1, 2))]) == 1


def test_white_noise_keeps_the_ideal_share_and_randomises_the_rest() -> None:
    rng = np.random.default_rng(1)
    ideal = np.zeros((4000, 20), dtype=bool)  # the ideal circuit always gives all zeros
    none = np.zeros(20)
    out = fidelity.degrade(ideal, 1000, 4000, p10=none, p01=none, rng=rng)
    all_zero = int((~out.any(axis=1)).sum())
    assert all_zero == 1000  # a random 20-bit string is all zeros with p = 1e-6
    others = out[out.any(axis=1)]
    assert abs(others.mean() - 0.5) < 0.02  # uniformly random bits


def test_readout_flips_each_bit_with_its_qubits_error() -> None:
    rng = np.random.default_rng(2)
    shots = 200_000
    ideal = np.zeros((shots, 2), dtype=bool)
    ideal[:, 1] = True  # bit 0 reads a prepared 0, bit 1 a prepared 1
    p10 = np.array([0.02, 0.0])
    p01 = np.array([0.0, 0.10])
    out = fidelity.degrade(ideal, shots, shots, p10=p10, p01=p01, rng=rng)
    assert out[:, 0].mean() == pytest.approx(0.02, abs=0.002)
    assert 1 - out[:, 1].mean() == pytest.approx(0.10, abs=0.003)


def test_ideal_share_is_binomial() -> None:
    keeps = fidelity.ideal_counts(0.3, 10_000, 50, np.random.default_rng(3))
    assert len(keeps) == 50
    assert np.mean(keeps) == pytest.approx(3000, rel=0.02)
    assert fidelity.ideal_counts(0.0, 10_000, 3, np.random.default_rng(3)) == [0, 0, 0]


def test_pauli_attenuation() -> None:
    cal = calibration.from_properties(
        {"qubits": [[{"name": "readout_error", "value": 0.05}]] * 2, "gates": []}
    )
    assert fidelity.pauli_attenuation("II", 0.5, cal, [0, 1]) == 1.0
    assert fidelity.pauli_attenuation("IZ", 0.5, cal, [0, 1]) == pytest.approx(0.5 * 0.9)
    assert fidelity.pauli_attenuation("ZZ", 0.5, cal, [0, 1]) == pytest.approx(0.5 * 0.81)


# ---- through the emulator ------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_only() -> Iterator[Emulator]:
    """Every circuit goes through the ideal simulation + fidelity model."""
    with running_emulator(max_exact_qubits=0) as emu:
        yield emu


def _torino() -> Any:
    from qiskit_ibm_runtime.fake_provider import FakeTorino

    return FakeTorino()


def _run(emu: Emulator, circuit: Any, shots: int, backend: str = "fake_torino") -> tuple[Any, Any]:
    from qiskit_ibm_runtime.decoders.result_decoder import ResultDecoder

    res = qrmi_resource(emu, backend)
    payload = qrmi.Payload.QiskitPrimitive(
        input=sampler_input(circuit, shots), program_id="sampler"
    )
    task = res.task_start(payload)
    assert emu.state.wait_until(lambda s: s.job(task).status.final, timeout=120)
    job = emu.state.job(task)
    assert job is not None
    assert job.status == JobStatus.COMPLETED, job.error
    return ResultDecoder.decode(res.task_result(task).value)[0], job


def _bell_share(counts: dict[str, int]) -> float:
    return (counts.get("00", 0) + counts.get("11", 0)) / sum(counts.values())


@pytest.mark.parametrize("path", ["exact", "fidelity-model"])
def test_noisy_bell_is_mostly_00_and_11(emu: Emulator, wide_only: Emulator, path: str) -> None:
    target = emu if path == "exact" else wide_only
    result, job = _run(target, bell_isa(_torino(), optimization_level=3), 4000)
    counts = result.data.meas.get_counts()
    assert sum(counts.values()) == 4000
    assert _bell_share(counts) >= 0.90
    assert 0 < 1 - _bell_share(counts) < 0.10  # a little leakage: the device is noisy
    assert min(counts.get("00", 0), counts.get("11", 0)) > 0.4 * 4000
    expected = "exact-noisy" if path == "exact" else "stabilizer"
    assert job.simulation["methods"] == [expected]


def test_wide_ghz_uses_the_stabilizer_and_the_model(wide_only: Emulator) -> None:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager

    qc = QuantumCircuit(20)
    qc.h(0)
    for i in range(19):
        qc.cx(i, i + 1)
    qc.measure_all()
    isa = generate_preset_pass_manager(
        optimization_level=1, backend=_torino(), seed_transpiler=1
    ).run(qc)
    result, job = _run(wide_only, isa, 5000)
    counts = result.data.meas.get_counts()
    assert sum(counts.values()) == 5000
    assert job.simulation["methods"] == ["stabilizer"]
    fid = job.simulation["fidelity"]
    assert 0.3 < fid < 1.0
    # The two GHZ outcomes lead; their share is what the model predicts: the surviving
    # fraction F, times the chance that no readout error flips any of the 20 bits.
    top_two = sorted(counts, key=counts.__getitem__, reverse=True)[:2]
    assert set(top_two) == {"0" * 20, "1" * 20}
    cal = calibration.for_backend("fake_torino")
    measured = [q for q in _measured_qubits(isa)]
    no_flip = math.prod(1 - (cal.readout[q][0] + cal.readout[q][1]) / 2 for q in measured)
    share = (counts["0" * 20] + counts["1" * 20]) / 5000
    assert share == pytest.approx(fid * no_flip, abs=0.04)


def _measured_qubits(circuit: Any) -> list[int]:
    return [
        circuit.find_bit(inst.qubits[0]).index
        for inst in circuit.data
        if inst.operation.name == "measure"
    ]


def test_ideal_mode_wide_circuit_is_exact(tmp_path: Any) -> None:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager

    qc = QuantumCircuit(30)
    qc.h(0)
    for i in range(29):
        qc.cx(i, i + 1)
    qc.rz(0.3, 5)  # not Clifford: the MPS path
    qc.measure_all()
    isa = generate_preset_pass_manager(
        optimization_level=1, backend=_torino(), seed_transpiler=1
    ).run(qc)
    with running_emulator(noise=False) as emu:
        result, job = _run(emu, isa, 2000)
    counts = result.data.meas.get_counts()
    assert set(counts) <= {"0" * 30, "1" * 30}
    assert job.simulation["methods"] == ["matrix_product_state"]
    assert job.simulation["fidelity"] == 1.0


def test_estimator_wide_path_attenuates_expectations(wide_only: Emulator) -> None:
    from qiskit.quantum_info import SparsePauliOp
    from qrmi.primitives.ibm import EstimatorV2

    res = qrmi_resource(wide_only, "fake_torino")
    isa = bell_isa(_torino(), measure=False, optimization_level=3)
    zz = SparsePauliOp("ZZ").apply_layout(isa.layout)
    result = EstimatorV2(res).run([(isa, zz)], precision=0.01).result()
    ev = float(result[0].data.evs)
    assert 0.7 < ev < 1.0  # below the ideal 1: white noise and readout attenuate it
    assert result[0].metadata["emulator"]["method"] == "stabilizer"


def test_executor_sampler_wide_path(wide_only: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """qiskit-ibm-runtime's client-side Sampler (program 'executor') on the model path."""
    for key, value in wide_only.runtime_service_env().items():
        monkeypatch.setenv(key, value)
    from qiskit_ibm_runtime import QiskitRuntimeService
    from qiskit_ibm_runtime.executor_sampler import Sampler

    backend = QiskitRuntimeService(**wide_only.runtime_service_kwargs()).backend("fake_torino")
    bell = bell_isa(backend, optimization_level=3)
    counts = Sampler(mode=backend).run([bell], shots=2000).result()[0]
    counts = counts.data.meas.get_counts()
    assert sum(counts.values()) == 2000
    assert _bell_share(counts) >= 0.90
    [job] = [j for j in wide_only.state.jobs() if j.program == "executor"]
    assert job.simulation is not None
    assert job.simulation["methods"] != ["exact-noisy"]


def test_job_record_says_how_it_was_simulated(emu: Emulator) -> None:
    _, job = _run(emu, bell_isa(_torino(), optimization_level=3), 100)
    assert job.simulation == {
        "methods": ["exact-noisy"],
        "qubits": 2,
        "fidelity": None,
        "ideal_shots": None,
        "failed_gates": 0,
    }
    assert job.peak_rss_bytes is not None
    assert job.peak_rss_bytes > 0
    logs = "\n".join(emu.state.job_logs(job.id))
    assert "method exact-noisy, 2 qubits" in logs
    snapshot = json.loads(json.dumps(emu.state.snapshot()))  # JSON-ready for the admin API
    assert snapshot["jobs"][0]["simulation"]["methods"] == ["exact-noisy"]
