"""Sampler, Estimator and executor jobs on qiskit-aer, simulated the way the circuit allows.

The method is chosen per pub from the qubits the (transpiled, ISA) circuit touches:

* **exact, with the calibrated noise** (``max_exact_qubits``, default 10): qiskit-aer with a
  noise model of the touched qubits only (depolarising + thermal relaxation per gate from
  the calibration, asymmetric readout error); aer picks density matrix or trajectories.
* **wider**: the *ideal* circuit on the cheapest exact-enough method (``stabilizer`` for a
  Clifford circuit, ``statevector`` up to ``STATEVECTOR_MAX_QUBITS``, else
  ``matrix_product_state`` with a bond-dimension cap), degraded by the ESP-weighted white
  noise and the per-qubit readout error of ``fidelity.py``.

Everything here runs inside a worker process (``workers.py``); heavy imports happen inside
the functions, and ``preload()`` performs them once in the fork server.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import calibration
from .workers import InputError

DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 0.015625
# Above this many touched qubits an ideal non-Clifford circuit goes to MPS: 2**20 amplitudes
# are 16 MiB and a few hundred gates take well under a second.
STATEVECTOR_MAX_QUBITS = 20
# Instructions that are not gates of the circuit's unitary part.
_NON_GATES = frozenset({"measure", "barrier", "delay", "reset", "store"})
# Gates aer's stabilizer method takes (rz/rx only at multiples of pi/2).
_CLIFFORD = frozenset(
    {"id", "x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz", "ecr", "swap"}
)
_CLIFFORD_ROTATIONS = frozenset({"rz", "rx", "ry"})


class JobInputError(InputError):
    """The job's input is not something the backend can run (bad pub, non-ISA circuit)."""


@dataclass(frozen=True)
class SimSettings:
    """How the emulator simulates IBM jobs (from ``EmulatorConfig``)."""

    noise: bool = True
    max_qubits: int = 0  # 0: as many as the backend has
    max_exact_qubits: int = 10
    mps_max_bond: int = 16


@dataclass
class SimReport:
    """What was done, for the job's log and metadata."""

    methods: list[str] = field(default_factory=list)
    qubits: int = 0
    fidelity: float | None = None
    ideal_shots: int | None = None
    failed_gates: int = 0

    def add(
        self, method: str, qubits: int, fid: float | None, ideal: int | None, failed: int = 0
    ) -> None:
        self.methods.append(method)
        self.qubits = max(self.qubits, qubits)
        if fid is not None:
            self.fidelity = fid if self.fidelity is None else min(self.fidelity, fid)
        if ideal is not None:
            self.ideal_shots = (self.ideal_shots or 0) + ideal
        self.failed_gates += failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": sorted(set(self.methods)),
            "qubits": self.qubits,
            "fidelity": None if self.fidelity is None else _sig(self.fidelity),
            "ideal_shots": self.ideal_shots,
            "failed_gates": self.failed_gates,
        }


def _sig(value: float) -> float:
    """Four significant digits: a fidelity of 2.5e-5 must not print as 0."""
    return float(f"{value:.4g}")


def preload() -> None:
    """Import what the jobs use (called once in the workers' fork server)."""
    for name in (
        "numpy",
        "scipy.sparse.csgraph",
        "qiskit",
        "qiskit.qasm3",
        "qiskit.primitives",
        "qiskit_aer",
        "qiskit_aer.noise",
        "qiskit_aer.primitives",
        "qiskit_ibm_runtime",
        "qiskit_ibm_runtime.json",
        "qiskit_ibm_runtime.fake_provider",
    ):
        importlib.import_module(name)


# ---- backend data ---------------------------------------------------------------------------
@functools.cache
def _fake_backend(source: str) -> Any:
    """The qiskit-ibm-runtime fake backend whose calibration the catalogue entry names."""
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    module = importlib.import_module(f"qiskit_ibm_runtime.fake_provider.backends.{source}")
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, FakeBackendV2)
            and value is not FakeBackendV2
        ):
            return value()
    raise LookupError(f"no fake backend class in {module.__name__}")


@functools.cache
def backend_target(source: str) -> Any:
    """The backend's transpiler ``Target`` (built once per process, ~0.2 s for 133 qubits)."""
    return _fake_backend(source).target


def _noise_model(source: str, backend_name: str, qubits: Iterable[int]) -> Any:
    """The calibrated noise of ``qubits`` only: a Bell pair on 133 qubits costs as on 5.

    Gate errors are aer's standard device model (depolarising error matched to the gate
    error, composed with thermal relaxation over the gate's duration); the readout error is
    the calibration's asymmetric one.
    """
    import warnings

    from qiskit.transpiler import Target
    from qiskit_aer.noise import NoiseModel, ReadoutError
    from qiskit_aer.noise.device.models import basic_device_gate_errors

    target = backend_target(source)
    wanted = set(qubits)
    sub = Target(
        num_qubits=target.num_qubits,
        dt=target.dt,
        qubit_properties=target.qubit_properties,
    )
    for name in target.operation_names:
        props = {
            qargs: prop
            for qargs, prop in target[name].items()
            if qargs is not None and set(qargs) <= wanted
        }
        if props:
            sub.add_instruction(target.operation_from_name(name), props, name=name)
    model = NoiseModel(basis_gates=list(target.operation_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, qargs, error in basic_device_gate_errors(target=sub):
            model.add_quantum_error(error, name, qargs, warnings=False)
    cal = calibration.for_backend(backend_name)
    for q in sorted(wanted):
        p10, p01 = cal.readout[q] if q < len(cal.readout) else (0.0, 0.0)
        if p10 or p01:
            model.add_readout_error(ReadoutError([[1 - p10, p10], [p01, 1 - p01]]), [q])
    return model


# ---- circuits -------------------------------------------------------------------------------
def _load_circuit(value: Any) -> Any:
    from qiskit import QuantumCircuit, qasm3

    if isinstance(value, QuantumCircuit):
        return value
    if isinstance(value, str):
        try:
            return qasm3.loads(value)
        except Exception as exc:
            raise JobInputError(f"pub circuit is not valid OpenQASM 3: {exc}") from exc
    raise JobInputError(f"pub circuit must be OpenQASM 3 text or a circuit, got {type(value)}")


def _check_isa(circuit: Any, target: Any, backend_name: str) -> None:
    """Refuse circuits the backend cannot run as they are, as IBM Runtime does."""
    if circuit.num_qubits > target.num_qubits:
        raise JobInputError(
            f"circuit uses {circuit.num_qubits} qubits but {backend_name} has {target.num_qubits}"
        )
    for inst in circuit.data:
        op = inst.operation
        if op.name == "barrier" or getattr(op, "blocks", None):
            continue
        qargs = tuple(circuit.find_bit(q).index for q in inst.qubits)
        if not target.instruction_supported(op.name, qargs):
            raise JobInputError(
                f"The instruction {op.name} on qubits {qargs} is not supported by the target "
                f"{backend_name}: transpile the circuit for the backend (an ISA circuit)"
            )


def _ops(circuit: Any, mapping: Sequence[int] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, physical qubits) of every instruction, control-flow bodies included."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for inst in circuit.data:
        qargs = [circuit.find_bit(q).index for q in inst.qubits]
        if mapping is not None:
            qargs = [mapping[q] for q in qargs]
        blocks = getattr(inst.operation, "blocks", None)
        if blocks:
            for block in blocks:
                out.extend(_ops(block, qargs))
            continue
        out.append((inst.operation.name, tuple(qargs)))
    return out


def _touched_qubits(circuit: Any) -> set[int]:
    return {q for name, qargs in _ops(circuit) if name != "barrier" for q in qargs}


def _clbit_qubits(circuit: Any) -> list[int | None]:
    """For each classical bit, the qubit last measured into it (None if never measured)."""
    out: list[int | None] = [None] * circuit.num_clbits
    for inst in circuit.data:
        if inst.operation.name == "measure":
            qubit = circuit.find_bit(inst.qubits[0]).index
            out[circuit.find_bit(inst.clbits[0]).index] = qubit
    return out


def _is_clifford(circuit: Any) -> bool:
    if circuit.num_parameters:
        return False
    for inst in circuit.data:
        op = inst.operation
        name = op.name
        if name in _NON_GATES or name in _CLIFFORD:
            continue
        if name in _CLIFFORD_ROTATIONS:
            quarter = float(op.params[0]) / (math.pi / 2)
            if abs(quarter - round(quarter)) < 1e-9:
                continue
        return False
    return True


def _ideal_method(circuit: Any, qubits: int) -> str:
    if _is_clifford(circuit):
        return "stabilizer"
    if qubits <= STATEVECTOR_MAX_QUBITS:
        return "statevector"
    return "matrix_product_state"


def _mps_order(circuit: Any, active: list[int]) -> list[int]:
    """Physical qubits in an order that keeps two-qubit gates short-ranged along the MPS.

    Reverse Cuthill-McKee on the circuit's interaction graph: aer's MPS swaps qubits next to
    each other for every two-qubit gate, so the bandwidth of the ordering is its cost.
    """
    import numpy as np

    # scipy ships no type information: import it as a module object.
    sparse = importlib.import_module("scipy.sparse")
    csgraph = importlib.import_module("scipy.sparse.csgraph")

    pos = {q: i for i, q in enumerate(active)}
    rows: list[int] = []
    cols: list[int] = []
    for name, qargs in _ops(circuit):
        if name != "barrier" and len(qargs) == 2:
            a, b = pos[qargs[0]], pos[qargs[1]]
            rows += [a, b]
            cols += [b, a]
    if not rows:
        return active
    graph = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(active), len(active)))
    order = csgraph.reverse_cuthill_mckee(graph, symmetric_mode=True)
    return [active[int(i)] for i in order]


def _compact(circuit: Any, order: list[int]) -> Any:
    """``circuit`` on ``len(order)`` qubits, physical qubit ``order[i]`` becoming qubit ``i``.

    Classical registers are kept as they are, so the sampler output is unchanged. Circuits
    with control flow are returned as they are (aer drops idle qubits itself).
    """
    from qiskit import QuantumCircuit, QuantumRegister

    if any(getattr(inst.operation, "blocks", None) for inst in circuit.data):
        return circuit
    new_index = {q: i for i, q in enumerate(order)}
    out = QuantumCircuit(QuantumRegister(len(order), "q"), *circuit.cregs, name=circuit.name)
    out.metadata = circuit.metadata
    for inst in circuit.data:
        if inst.operation.name == "barrier":
            continue
        qargs = [out.qubits[new_index[circuit.find_bit(q).index]] for q in inst.qubits]
        out.append(inst.operation, qargs, inst.clbits, copy=False)
    return out


def _backend_options(method: str, settings: SimSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"method": method}
    if method == "matrix_product_state":
        options["matrix_product_state_max_bond_dimension"] = settings.mps_max_bond
    return options


# ---- job input ------------------------------------------------------------------------------
def _decode(params: dict[str, Any]) -> dict[str, Any]:
    from qiskit_ibm_runtime.json import RuntimeDecoder

    decoded: dict[str, Any] = json.loads(json.dumps(params), cls=RuntimeDecoder)
    return decoded


def _seed(options: dict[str, Any]) -> int | None:
    seed = (options.get("simulator") or {}).get("seed_simulator")
    return seed if isinstance(seed, int) else None


def _param_values(circuit: Any, values: Any) -> Any:
    """Parameter values as sent, or None for a circuit without parameters."""
    if circuit.num_parameters == 0:
        return None
    return values


def _pad(circuit: Any, width: int) -> Any:
    """Widen ``circuit`` to ``width`` qubits (QASM 3 keeps only up to the highest used)."""
    from qiskit import QuantumCircuit

    if circuit.num_qubits >= width:
        return circuit
    wide = QuantumCircuit(width, name=circuit.name)
    for creg in circuit.cregs:
        wide.add_register(creg)
    return wide.compose(circuit, qubits=range(circuit.num_qubits), clbits=range(circuit.num_clbits))


def _ensure_limit(qubits: int, settings: SimSettings, backend_qubits: int) -> None:
    limit = settings.max_qubits or backend_qubits
    if qubits > limit:
        raise JobInputError(
            f"the circuit acts on {qubits} qubits; this emulator is configured to simulate "
            f"at most {limit} (--max-qubits)"
        )


def _rng(seed: int | None) -> Any:
    import numpy as np

    return np.random.default_rng(seed)


# ---- sampler --------------------------------------------------------------------------------
def _sample_exact(
    pub: Any, qubits: set[int], *, source: str, backend_name: str, settings: SimSettings, seed: Any
) -> Any:
    from qiskit.primitives import BackendSamplerV2
    from qiskit_aer import AerSimulator

    if settings.noise:
        model = _noise_model(source, backend_name, qubits)
        sim = AerSimulator(noise_model=model, basis_gates=model.basis_gates)
    else:
        sim = AerSimulator()
    run_options = {"seed_simulator": seed} if seed is not None else {}
    sampler = BackendSamplerV2(backend=sim, options={"run_options": run_options})
    return sampler.run([pub]).result()[0]


def _sample_wide(
    pub: Any, active: list[int], backend_name: str, settings: SimSettings, rng: Any
) -> tuple[Any, str, float, int, int]:
    """Ideal samples of ``pub`` degraded by the fidelity model.

    Returns (pub result, method, modelled fidelity, shots from the ideal circuit, failed gates).
    """
    import numpy as np
    from qiskit.primitives.containers import BitArray, DataBin, SamplerPubResult
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_aer.primitives import SamplerV2 as AerSampler

    from . import fidelity

    circuit = pub.circuit
    method = _ideal_method(circuit, len(active))
    cal = calibration.for_backend(backend_name) if settings.noise else None
    ops = _ops(circuit)
    fid = cal.success_probability(ops) if cal is not None else 1.0
    failed = cal.failed_gates(ops) if cal is not None else 0
    points = max(1, math.prod(pub.shape))
    keeps = fidelity.ideal_counts(fid, pub.shots, points, rng)
    ideal_shots = max(keeps)
    ideal = None
    if ideal_shots:  # no shot survives the noise: the ideal circuit need not run at all
        order = _mps_order(circuit, active) if method == "matrix_product_state" else active
        sampler = AerSampler(
            seed=int(rng.integers(2**31)),
            options={"backend_options": _backend_options(method, settings)},
        )
        ideal_pub = SamplerPub(_compact(circuit, order), pub.parameter_values, ideal_shots)
        ideal = sampler.run([ideal_pub]).result()[0]
    clbit_qubits = _clbit_qubits(circuit)
    clbit_index = {bit: i for i, bit in enumerate(circuit.clbits)}
    arrays = {}
    for creg in circuit.cregs:
        if ideal is None:
            raw = np.zeros((points, 0, creg.size), dtype=bool)
        else:
            bits: BitArray = getattr(ideal.data, creg.name)
            raw = bits.to_bool_array(order="little").reshape(points, ideal_shots, creg.size)
        qubits = [clbit_qubits[clbit_index[b]] for b in creg]
        p10, p01 = fidelity.readout_probabilities(cal, qubits)
        noisy = fidelity.degrade_points(raw, keeps, pub.shots, p10=p10, p01=p01, rng=rng)
        arrays[creg.name] = BitArray.from_bool_array(
            noisy.reshape(*pub.shape, pub.shots, creg.size), order="little"
        )
    data = DataBin(**arrays, shape=pub.shape)
    metadata = {
        "shots": pub.shots,
        "circuit_metadata": circuit.metadata or {},
        "emulator": {
            "method": method,
            "noise_model": "esp-white-noise+readout" if cal is not None else "ideal",
            "fidelity": _sig(fid),
            "ideal_shots": int(sum(keeps)),
            "failed_gates": failed,
        },
    }
    return SamplerPubResult(data, metadata=metadata), method, fid, int(sum(keeps)), failed


def run_sampler(
    source: str, backend_name: str, params: dict[str, Any], settings: SimSettings
) -> tuple[str, dict[str, Any]]:
    """Run a Sampler V2 job; returns the RuntimeEncoder JSON of its PrimitiveResult."""
    from qiskit.primitives import PrimitiveResult
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_ibm_runtime.json import RuntimeEncoder

    params = _decode(params)
    options = params.get("options") or {}
    shots = params.get("shots") or options.get("default_shots") or DEFAULT_SHOTS
    target = backend_target(source)
    seed = _seed(options)
    rng = _rng(seed)
    pubs = []
    for raw in params.get("pubs") or []:
        parts = list(raw) if isinstance(raw, list | tuple) else [raw]
        if not 1 <= len(parts) <= 3:
            raise JobInputError("a sampler pub is (circuit[, parameter values[, shots]])")
        circuit = _load_circuit(parts[0])
        _check_isa(circuit, target, backend_name)
        values = _param_values(circuit, parts[1] if len(parts) > 1 else None)
        pub_shots = parts[2] if len(parts) > 2 and parts[2] is not None else shots
        try:
            pubs.append(SamplerPub.coerce((circuit, values, int(pub_shots))))
        except Exception as exc:
            raise JobInputError(f"bad sampler pub: {exc}") from exc
    if not pubs:
        raise JobInputError("the sampler input has no pubs")
    touched = [_touched_qubits(pub.circuit) for pub in pubs]
    for qubits in touched:
        _ensure_limit(len(qubits), settings, target.num_qubits)
    report = SimReport()
    results = []
    for pub, qubits in zip(pubs, touched, strict=True):
        if settings.noise and len(qubits) <= settings.max_exact_qubits:
            results.append(
                _sample_exact(
                    pub,
                    qubits,
                    source=source,
                    backend_name=backend_name,
                    settings=settings,
                    seed=seed,
                )
            )
            report.add("exact-noisy", len(qubits), None, None)
        elif not settings.noise and len(qubits) <= STATEVECTOR_MAX_QUBITS:
            results.append(
                _sample_exact(
                    pub,
                    qubits,
                    source=source,
                    backend_name=backend_name,
                    settings=settings,
                    seed=seed,
                )
            )
            report.add("exact-ideal", len(qubits), None, None)
        else:
            res, method, fid, ideal, failed = _sample_wide(
                pub, sorted(qubits), backend_name, settings, rng
            )
            results.append(res)
            report.add(method, len(qubits), fid, ideal, failed)
    result = PrimitiveResult(results, metadata={"version": 2})
    return json.dumps(result, cls=RuntimeEncoder), report.to_dict()


# ---- estimator ------------------------------------------------------------------------------
def _observable_width(observables: Any) -> int:
    """Qubit count of the observables (the length of their Pauli labels), 0 if unknown."""
    from qiskit.primitives.containers.observables_array import ObservablesArray

    try:
        arr = ObservablesArray.coerce(observables)
    except Exception:
        return 0
    for item in arr.tolist() if arr.ndim else [arr.tolist()]:
        if isinstance(item, dict) and item:
            return len(next(iter(item)))
    return 0


def _observable_support(observables: Any) -> set[int]:
    from qiskit.primitives.containers.observables_array import ObservablesArray

    support: set[int] = set()
    arr = ObservablesArray.coerce(observables)
    items = arr.ravel().tolist() if arr.ndim else [arr.tolist()]
    for item in items:
        for label in item:
            n = len(label)
            support |= {n - 1 - i for i, ch in enumerate(label) if ch != "I"}
    return support


def _attenuated(observables: Any, fid: float, cal: calibration.Calibration | None) -> Any:
    """The observables with each Pauli term scaled as the fidelity model predicts."""
    import numpy as np
    from qiskit.primitives.containers.observables_array import ObservablesArray

    from . import fidelity

    arr = ObservablesArray.coerce(observables)
    items = arr.ravel().tolist() if arr.ndim else [arr.tolist()]
    width = max((len(label) for item in items for label in item), default=0)
    positions = list(range(width))
    scaled = [
        {
            label: coeff * fidelity.pauli_attenuation(label, fid, cal, positions)
            for label, coeff in item.items()
        }
        for item in items
    ]
    return np.array(scaled, dtype=object).reshape(arr.shape) if arr.ndim else scaled[0]


def run_estimator(
    source: str, backend_name: str, params: dict[str, Any], settings: SimSettings
) -> tuple[str, dict[str, Any]]:
    """Run an Estimator V2 job; returns the RuntimeEncoder JSON of its PrimitiveResult."""
    from qiskit.primitives import BackendEstimatorV2, PrimitiveResult
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import EstimatorV2 as AerEstimator
    from qiskit_ibm_runtime.json import RuntimeEncoder

    params = _decode(params)
    options = params.get("options") or {}
    precision = params.get("precision") or options.get("default_precision") or DEFAULT_PRECISION
    target = backend_target(source)
    seed = _seed(options)
    rng = _rng(seed)
    pubs: list[tuple[Any, set[int]]] = []
    for raw in params.get("pubs") or []:
        parts = list(raw) if isinstance(raw, list | tuple) else [raw]
        if not 2 <= len(parts) <= 4:
            raise JobInputError(
                "an estimator pub is (circuit, observables[, parameter values[, precision]])"
            )
        circuit = _load_circuit(parts[0])
        _check_isa(circuit, target, backend_name)
        observables = parts[1]
        circuit = _pad(circuit, _observable_width(observables))
        values = _param_values(circuit, parts[2] if len(parts) > 2 else None)
        pub_precision = parts[3] if len(parts) > 3 and parts[3] is not None else precision
        try:
            pub = EstimatorPub.coerce((circuit, observables, values, float(pub_precision)))
            support = _observable_support(observables)
        except Exception as exc:
            raise JobInputError(f"bad estimator pub: {exc}") from exc
        pubs.append((pub, _touched_qubits(circuit) | support))
    if not pubs:
        raise JobInputError("the estimator input has no pubs")
    for _, qubits in pubs:
        _ensure_limit(len(qubits), settings, target.num_qubits)
    report = SimReport()
    results = []
    for pub, qubits in pubs:
        n = len(qubits)
        if (settings.noise and n <= settings.max_exact_qubits) or (
            not settings.noise and n <= STATEVECTOR_MAX_QUBITS
        ):
            if settings.noise:
                model = _noise_model(source, backend_name, qubits)
                sim = AerSimulator(noise_model=model, basis_gates=model.basis_gates)
            else:
                sim = AerSimulator()
            run = {"seed_simulator": seed} if seed is not None else {}
            estimator = BackendEstimatorV2(
                backend=sim, options={"default_precision": float(precision), **run}
            )
            results.append(estimator.run([pub]).result()[0])
            report.add("exact-noisy" if settings.noise else "exact-ideal", n, None, None)
            continue
        cal = calibration.for_backend(backend_name) if settings.noise else None
        fid = cal.success_probability(_ops(pub.circuit)) if cal is not None else 1.0
        method = _ideal_method(pub.circuit, n)
        scaled = EstimatorPub.coerce(
            (
                pub.circuit,
                _attenuated(pub.observables, fid, cal),
                pub.parameter_values,
                pub.precision,
            )
        )
        estimator = AerEstimator(
            options={
                "backend_options": _backend_options(method, settings),
                "run_options": {"seed_simulator": int(rng.integers(2**31))},
            }
        )
        res = estimator.run([scaled]).result()[0]
        res.metadata["emulator"] = {
            "method": method,
            "noise_model": "esp-white-noise+readout" if cal is not None else "ideal",
            "fidelity": _sig(fid),
        }
        results.append(res)
        report.add(method, n, fid, None)
    result = PrimitiveResult(results, metadata={"version": 2})
    return json.dumps(result, cls=RuntimeEncoder), report.to_dict()


# ---- executor -------------------------------------------------------------------------------
def run_executor(
    source: str, backend_name: str, params: dict[str, Any], settings: SimSettings
) -> tuple[str, dict[str, Any]]:
    """Run an ``executor`` quantum program (what qiskit-ibm-runtime's client-side
    ``executor_sampler.Sampler`` / ``executor_estimator.Estimator`` submit).

    Returns the program result as the versioned schema model's JSON the client decodes.
    Narrow programs run on aer with the calibrated noise; wider ones on the ideal method,
    their measured registers degraded by the fidelity model, as for the sampler.
    """
    # ibm-quantum-schemas (a qiskit-ibm-runtime dependency) ships no type information.
    tensor = importlib.import_module("ibm_quantum_schemas.common").CompressedTensorModel
    v2 = importlib.import_module("ibm_quantum_schemas.executor.version_2_0.models")
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime.fake_provider.executor.run_quantum_program import run_quantum_program
    from qiskit_ibm_runtime.options_models import SimulatorOptions
    from qiskit_ibm_runtime.quantum_program.converters.converters_2_0 import (
        passthrough_data_to_2_0,
    )
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )

    version = params.get("schema_version")
    if version != "v2.0":
        raise JobInputError(f"executor schema_version {version!r} is not supported (use v2.0)")
    converter = QUANTUM_PROGRAM_PARAMS_CONVERTERS[version]
    try:
        program, _options = converter.decoder(converter.model.model_validate(params))
    except Exception as exc:
        raise JobInputError(f"bad executor input: {exc}") from exc
    target = backend_target(source)
    touched: set[int] = set()
    for item in program.items:
        samplex = getattr(item, "samplex", None)
        if samplex is not None and not getattr(samplex, "_finalized", True):
            samplex.finalize()  # a deserialized samplex must be finalized before sampling
        _check_isa(item.circuit, target, backend_name)
        touched |= _touched_qubits(item.circuit)
    _ensure_limit(len(touched), settings, target.num_qubits)
    report = SimReport()
    exact = len(touched) <= (
        settings.max_exact_qubits if settings.noise else STATEVECTOR_MAX_QUBITS
    )
    if exact:
        if settings.noise:
            model = _noise_model(source, backend_name, touched)
            sim = AerSimulator(noise_model=model, basis_gates=model.basis_gates)
        else:
            sim = AerSimulator()
        result = run_quantum_program(sim, program, SimulatorOptions())
        report.add("exact-noisy" if settings.noise else "exact-ideal", len(touched), None, None)
    else:
        method = _ideal_method(program.items[0].circuit, len(touched))
        if any(_ideal_method(item.circuit, len(touched)) != method for item in program.items):
            method = "matrix_product_state" if len(touched) > STATEVECTOR_MAX_QUBITS else method
        sim = AerSimulator(**_backend_options(method, settings))
        result = run_quantum_program(sim, program, SimulatorOptions())
        cal = calibration.for_backend(backend_name) if settings.noise else None
        rng = _rng(None)
        for item, item_result in zip(program.items, result, strict=True):
            fid = cal.success_probability(_ops(item.circuit)) if cal is not None else 1.0
            _degrade_registers(item.circuit, item_result, fid, cal, rng)
            report.add(method, len(touched), fid, None)
    model = v2.QuantumProgramResultModel(
        data=[
            v2.QuantumProgramResultItemModel(
                results={k: tensor.from_numpy(v) for k, v in item.items()},
                metadata=v2.ItemMetadataModel(),
            )
            for item in result
        ],
        metadata=v2.MetadataModel(chunk_timing=[]),
        passthrough_data=passthrough_data_to_2_0(result.passthrough_data),
        semantic_role=program._semantic_role,
    )
    return str(model.model_dump_json()), report.to_dict()


def _degrade_registers(
    circuit: Any, item_result: Any, fid: float, cal: calibration.Calibration | None, rng: Any
) -> None:
    """Apply the fidelity model to the measured registers of one executor item, in place."""
    from . import fidelity

    clbit_qubits = _clbit_qubits(circuit)
    clbit_index = {bit: i for i, bit in enumerate(circuit.clbits)}
    for creg in circuit.cregs:
        raw = item_result.get(creg.name) if hasattr(item_result, "get") else None
        if raw is None:
            continue
        shape = raw.shape
        shots, width = shape[-2], shape[-1]
        flat = raw.reshape(-1, shots, width)
        keeps = fidelity.ideal_counts(fid, shots, flat.shape[0], rng)
        qubits = [clbit_qubits[clbit_index[b]] for b in creg]
        p10, p01 = fidelity.readout_probabilities(cal, qubits)
        noisy = fidelity.degrade_points(flat, keeps, shots, p10=p10, p01=p01, rng=rng)
        item_result[creg.name] = noisy.reshape(shape)


PROGRAMS = {"sampler": run_sampler, "estimator": run_estimator, "executor": run_executor}


def run_primitive(
    program_id: str,
    source: str,
    backend_name: str,
    params: dict[str, Any],
    settings: SimSettings,
) -> tuple[str, dict[str, Any]]:
    """Dispatch on the Runtime program id (``sampler``, ``estimator`` or ``executor``)."""
    try:
        fn = PROGRAMS[program_id]
    except KeyError:
        raise JobInputError(f"program {program_id!r} is not supported by the emulator") from None
    return fn(source, backend_name, params, settings)
