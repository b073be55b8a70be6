"""Helpers for the emulator tests (clients pointed at the emulator, deadline waits)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from qpu_k8s.emulator import Emulator


def qrmi_resource(
    emu: Emulator, name: str, resource_type: str | None = None, **overrides: str
) -> Any:
    """A real ``qrmi.QuantumResource`` pointed at the emulator via ``from_config``."""
    import qrmi as qrmi_module

    qrmi: Any = qrmi_module  # re-exported from a Rust core that type checkers cannot see

    from qpu_k8s.emulator import catalog

    rtype = resource_type or catalog.get(name).default_resource_type
    types = {
        "ibm-quantum-compute-service": qrmi.ResourceType.IBMQuantumComputeService,
        "qiskit-runtime-service": qrmi.ResourceType.IBMQiskitRuntimeService,
        "pasqal-cloud": qrmi.ResourceType.PasqalCloud,
    }
    config = {**emu.qrmi_config(name, rtype), **overrides}
    return qrmi.QuantumResource.from_config(name, types[rtype], config)


def bell_isa(backend: Any, measure: bool = True, optimization_level: int = 1) -> Any:
    """A Bell-pair circuit transpiled for ``backend`` (an ISA circuit).

    Level 1 keeps the trivial layout (qubits 0 and 1); levels 2-3 pick a well-calibrated
    pair, as a user would for a 133-qubit device whose qubit 0 reads out 17 % wrong.
    """
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    pm = generate_preset_pass_manager(
        optimization_level=optimization_level, backend=backend, seed_transpiler=1
    )
    return pm.run(qc)


def wait_for(predicate: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


class Call:
    """Runs a (possibly hanging) blocking call in a daemon thread, like the lead's adapter.

    A daemon thread because a qrmi call stuck on a silent server never returns and would
    otherwise keep the interpreter from exiting.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)


def long_job_circuit(num_qubits: int = 11, reps: int = 60) -> Any:
    """A bound, transpiled su2 circuit for fake_torino whose exact noisy simulation takes
    minutes (density matrix of ``num_qubits`` qubits, thousands of gates): a job that is
    still running when a test cancels it, times it out or stops the emulator under it."""
    import numpy as np
    from qiskit.circuit.library import efficient_su2
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.fake_provider import FakeTorino

    circuit = efficient_su2(num_qubits, entanglement="linear", reps=reps)
    circuit.measure_all()
    values = np.random.default_rng(7).random(circuit.num_parameters)
    pm = generate_preset_pass_manager(optimization_level=1, backend=FakeTorino(), seed_transpiler=7)
    return pm.run(circuit).assign_parameters(values)


def sampler_input(circuit: Any, shots: int) -> str:
    """A Sampler V2 job input as qrmi.primitives sends it (OpenQASM 3 pubs)."""
    import json

    from qiskit import qasm3

    pub = qasm3.dumps(circuit, disable_constants=True, allow_aliasing=True)
    body = {"pubs": [[pub, None, shots]], "shots": shots, "options": {}, "version": 2}
    return json.dumps(body)
