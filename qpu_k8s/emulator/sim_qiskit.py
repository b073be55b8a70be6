"""Sampler and Estimator jobs on qiskit-aer, with the backend's calibrated noise.

Heavy imports (qiskit, qiskit-aer, qiskit-ibm-runtime) happen inside the functions, on the
job's worker thread, so importing the emulator stays cheap. The noise model of a backend is
built once; each job then keeps only the errors on the qubits it touches, which makes a
Bell pair on the 133-qubit Torino as fast as on the 5-qubit Manila.
"""

# The simulators load inside the functions, on worker threads: importing this module is cheap.

from __future__ import annotations

import functools
import importlib
import json
import threading
from typing import Any

DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 0.015625

_lock = threading.Lock()  # the caches below are filled from several worker threads


class JobInputError(ValueError):
    """The job's input is not something the backend can run (bad pub, non-ISA circuit)."""


def _fake_backend(source: str) -> Any:
    """The qiskit-ibm-runtime fake backend whose calibration the catalogue entry names."""
    with _lock:
        return _fake_backend_unlocked(source)


@functools.cache
def _fake_backend_unlocked(source: str) -> Any:
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


def _noise_model(source: str) -> Any:
    with _lock:
        return _noise_model_unlocked(source)


@functools.cache
def _noise_model_unlocked(source: str) -> Any:
    from qiskit_aer.noise import NoiseModel

    return NoiseModel.from_backend(_fake_backend_unlocked(source))


def _reduced_noise(full: Any, qubits: set[int]) -> Any:
    """A copy of ``full`` holding only the errors that act on ``qubits``."""
    from qiskit_aer.noise import NoiseModel

    reduced = NoiseModel(basis_gates=full.basis_gates)
    # NoiseModel has no public iterator over its per-qubit errors; these two mappings
    # (instruction -> qubits -> error, qubits -> readout error) are its storage.
    for name, per_qubits in full._local_quantum_errors.items():
        for qargs, error in per_qubits.items():
            if set(qargs) <= qubits:
                reduced.add_quantum_error(error, name, qargs)
    for qargs, error in full._local_readout_errors.items():
        if set(qargs) <= qubits:
            reduced.add_readout_error(error, qargs)
    return reduced


def _simulator(source: str, qubits: set[int], noise: bool) -> Any:
    from qiskit_aer import AerSimulator

    if not noise:
        return AerSimulator()
    full = _noise_model(source)
    return AerSimulator(noise_model=_reduced_noise(full, qubits), basis_gates=full.basis_gates)


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


def _touched_qubits(circuit: Any) -> set[int]:
    return {circuit.find_bit(q).index for inst in circuit.data for q in inst.qubits}


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


def _decode(params: dict[str, Any]) -> dict[str, Any]:
    from qiskit_ibm_runtime.json import RuntimeDecoder

    decoded: dict[str, Any] = json.loads(json.dumps(params), cls=RuntimeDecoder)
    return decoded


def _seed(options: dict[str, Any]) -> dict[str, Any]:
    seed = (options.get("simulator") or {}).get("seed_simulator")
    return {"seed_simulator": seed} if isinstance(seed, int) else {}


def _ensure_limit(qubits: set[int], limit: int) -> None:
    if len(qubits) > limit:
        raise JobInputError(
            f"the circuit acts on {len(qubits)} qubits; this emulator simulates at most {limit}"
        )


def run_sampler(
    source: str, backend_name: str, params: dict[str, Any], *, noise: bool, max_qubits: int
) -> str:
    """Run a Sampler V2 job; returns the RuntimeEncoder JSON of its PrimitiveResult."""
    from qiskit.primitives import BackendSamplerV2
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit_ibm_runtime.json import RuntimeEncoder

    params = _decode(params)
    options = params.get("options") or {}
    shots = params.get("shots") or options.get("default_shots") or DEFAULT_SHOTS
    target = _fake_backend(source).target
    pubs = []
    touched: set[int] = set()
    for raw in params.get("pubs") or []:
        parts = list(raw) if isinstance(raw, list | tuple) else [raw]
        if not 1 <= len(parts) <= 3:
            raise JobInputError("a sampler pub is (circuit[, parameter values[, shots]])")
        circuit = _load_circuit(parts[0])
        _check_isa(circuit, target, backend_name)
        values = _param_values(circuit, parts[1] if len(parts) > 1 else None)
        pub_shots = parts[2] if len(parts) > 2 and parts[2] is not None else shots
        touched |= _touched_qubits(circuit)
        pubs.append(SamplerPub.coerce((circuit, values, int(pub_shots))))
    if not pubs:
        raise JobInputError("the sampler input has no pubs")
    _ensure_limit(touched, max_qubits)
    sampler = BackendSamplerV2(
        backend=_simulator(source, touched, noise), options={"run_options": _seed(options)}
    )
    result = sampler.run(pubs).result()
    return json.dumps(result, cls=RuntimeEncoder)


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


def run_estimator(
    source: str, backend_name: str, params: dict[str, Any], *, noise: bool, max_qubits: int
) -> str:
    """Run an Estimator V2 job; returns the RuntimeEncoder JSON of its PrimitiveResult."""
    from qiskit.primitives import BackendEstimatorV2
    from qiskit.primitives.containers.estimator_pub import EstimatorPub
    from qiskit_ibm_runtime.json import RuntimeEncoder

    params = _decode(params)
    options = params.get("options") or {}
    precision = params.get("precision") or options.get("default_precision") or DEFAULT_PRECISION
    target = _fake_backend(source).target
    pubs = []
    touched: set[int] = set()
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
        except Exception as exc:
            raise JobInputError(f"bad estimator pub: {exc}") from exc
        touched |= _touched_qubits(circuit) | _observable_support(observables)
        pubs.append(pub)
    if not pubs:
        raise JobInputError("the estimator input has no pubs")
    _ensure_limit(touched, max_qubits)
    estimator = BackendEstimatorV2(
        backend=_simulator(source, touched, noise),
        options={"default_precision": float(precision), **_seed(options)},
    )
    result = estimator.run(pubs).result()
    return json.dumps(result, cls=RuntimeEncoder)


def run_executor(
    source: str, backend_name: str, params: dict[str, Any], *, noise: bool, max_qubits: int
) -> str:
    """Run an ``executor`` quantum program (what qiskit-ibm-runtime's client-side
    ``executor_sampler.Sampler`` / ``executor_estimator.Estimator`` submit).

    Returns the program result as the versioned schema model's JSON the client decodes.
    """
    # ibm-quantum-schemas (a qiskit-ibm-runtime dependency) ships no type information.
    tensor = importlib.import_module("ibm_quantum_schemas.common").CompressedTensorModel
    v2 = importlib.import_module("ibm_quantum_schemas.executor.version_2_0.models")
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
    target = _fake_backend(source).target
    touched: set[int] = set()
    for item in program.items:
        samplex = getattr(item, "samplex", None)
        if samplex is not None and not getattr(samplex, "_finalized", True):
            samplex.finalize()  # a deserialized samplex must be finalized before sampling
        _check_isa(item.circuit, target, backend_name)
        touched |= _touched_qubits(item.circuit)
    _ensure_limit(touched, max_qubits)
    result = run_quantum_program(_simulator(source, touched, noise), program, SimulatorOptions())
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
    return str(model.model_dump_json())


PROGRAMS = {"sampler": run_sampler, "estimator": run_estimator, "executor": run_executor}


def run_primitive(
    program_id: str,
    *,
    source: str,
    backend_name: str,
    params: dict[str, Any],
    noise: bool,
    max_qubits: int,
) -> str:
    """Dispatch on the Runtime program id (``sampler``, ``estimator`` or ``executor``)."""
    try:
        fn = PROGRAMS[program_id]
    except KeyError:
        raise JobInputError(f"program {program_id!r} is not supported by the emulator") from None
    return fn(source, backend_name, params, noise=noise, max_qubits=max_qubits)
