"""A backend's calibration as the fidelity model needs it: gate errors and readout errors.

Read from the same ``props_<name>.json`` snapshot the emulator serves at
``/backends/{name}/properties`` (so a client's transpiler and the simulation see one device),
with the standard library only: the server process never imports qiskit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import catalog, ibm_data

# Instructions that carry no gate error of their own in the model: measurement is modelled
# by the readout error, the rest are timing or bookkeeping.
NO_GATE_ERROR = frozenset({"measure", "barrier", "delay", "reset", "store"})


@dataclass(frozen=True)
class Calibration:
    """Per-qubit readout errors and per-(gate, qubits) error rates of one backend."""

    num_qubits: int
    # p(1|0) and p(0|1) per qubit: the chance a prepared 0 reads 1 and a prepared 1 reads 0.
    readout: tuple[tuple[float, float], ...]
    gate_errors: Mapping[tuple[str, tuple[int, ...]], float] = field(repr=False)

    def gate_error(self, name: str, qubits: tuple[int, ...]) -> float:
        """The calibrated error of ``name`` on ``qubits`` (0 when the snapshot has none)."""
        err = self.gate_errors.get((name, qubits))
        if err is None and len(qubits) == 2:
            err = self.gate_errors.get((name, (qubits[1], qubits[0])))
        return err or 0.0

    def failed_gates(self, ops: Iterable[tuple[str, tuple[int, ...]]]) -> int:
        """How many of ``ops`` the calibration reports as failed (error 1: a broken coupler)."""
        return sum(
            1
            for name, qubits in ops
            if name not in NO_GATE_ERROR and self.gate_error(name, qubits) >= 1.0
        )

    def success_probability(self, ops: Iterable[tuple[str, tuple[int, ...]]]) -> float:
        """ESP of a circuit: the product of ``1 - error`` over its gates (readout excluded)."""
        log_f = 0.0
        for name, qubits in ops:
            if name in NO_GATE_ERROR:
                continue
            err = self.gate_error(name, qubits)
            if err >= 1.0:
                return 0.0
            if err > 0.0:
                log_f += math.log1p(-err)
        return math.exp(log_f)


def _clamp(value: Any, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    if math.isnan(number):
        return 0.0
    return min(max(number, 0.0), high)


def from_properties(props: dict[str, Any]) -> Calibration:
    """Build a ``Calibration`` from an IBM backend-properties document."""
    readout = []
    for entries in props.get("qubits") or []:
        values = {e.get("name"): e.get("value") for e in entries if isinstance(e, dict)}
        symmetric = _clamp(values.get("readout_error"), 0.5)
        p10 = values.get("prob_meas1_prep0")
        p01 = values.get("prob_meas0_prep1")
        readout.append(
            (
                _clamp(p10, 0.5) if p10 is not None else symmetric,
                _clamp(p01, 0.5) if p01 is not None else symmetric,
            )
        )
    errors: dict[tuple[str, tuple[int, ...]], float] = {}
    for gate in props.get("gates") or []:
        if not isinstance(gate, dict):
            continue
        params = {p.get("name"): p.get("value") for p in gate.get("parameters") or []}
        if "gate_error" not in params:
            continue
        key = (str(gate.get("gate")), tuple(int(q) for q in gate.get("qubits") or []))
        errors[key] = _clamp(params["gate_error"], 1.0)
    return Calibration(num_qubits=len(readout), readout=tuple(readout), gate_errors=errors)


@functools.cache
def for_backend(name: str) -> Calibration:
    """The calibration of a catalogue IBM backend (parsed once per process)."""
    return from_properties(ibm_data.properties(catalog.get(name)))
