"""The cheap noise model for circuits too wide for an exact noisy simulation.

Samples of the *ideal* circuit are degraded in two steps (docs/emulator.md has the sources
and what the model does and does not reproduce):

1. **Global white noise weighted by the ESP.** With probability ``F`` (the estimated success
   probability: the product of ``1 - error`` over the calibrated gate errors along the
   transpiled circuit) a shot is an ideal sample, otherwise it is a uniformly random bit
   string. This is the depolarising-mixture model used to predict the output of noisy random
   circuits; it needs only ``Binomial(shots, F)`` ideal samples, so a 127-qubit circuit
   whose ESP is 0.5 % costs the simulator about 50 shots, not 10000.
2. **Per-qubit readout error** from the calibration, asymmetric (``p(1|0)``, ``p(0|1)``),
   applied independently to each measured bit.

Only numpy is needed; these functions run in the worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration import Calibration

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


def ideal_counts(fidelity: float, shots: int, points: int, rng: np.random.Generator) -> list[int]:
    """How many of each parameter point's ``shots`` come from the ideal circuit."""
    f = min(max(fidelity, 0.0), 1.0)
    return [int(k) for k in rng.binomial(shots, f, size=points)]


def readout_probabilities(
    cal: Calibration | None, clbit_qubits: Sequence[int | None]
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]:
    """Per classical bit: p(read 1 | 0) and p(read 0 | 1) of the qubit measured into it."""
    p10 = np.zeros(len(clbit_qubits))
    p01 = np.zeros(len(clbit_qubits))
    if cal is None:
        return p10, p01
    for i, q in enumerate(clbit_qubits):
        if q is not None and 0 <= q < len(cal.readout):
            p10[i], p01[i] = cal.readout[q]
    return p10, p01


def degrade(
    ideal: BoolArray,
    keep: int,
    shots: int,
    *,
    p10: np.ndarray[Any, np.dtype[np.float64]],
    p01: np.ndarray[Any, np.dtype[np.float64]],
    rng: np.random.Generator,
) -> BoolArray:
    """``shots`` noisy samples from ``ideal`` (rows = shots, columns = classical bits).

    The first ``keep`` ideal rows survive at random positions; the other rows are uniform
    random bits (the white-noise part); then every bit is flipped with its readout error.
    """
    width = ideal.shape[-1]
    out: BoolArray = rng.random((shots, width)) < 0.5
    keep = min(keep, shots, ideal.shape[0])
    if keep:
        rows = rng.permutation(shots)[:keep]
        out[rows] = ideal[:keep]
    if width and (p10.any() or p01.any()):
        flip_prob = np.where(out, p01[np.newaxis, :], p10[np.newaxis, :])
        out ^= rng.random((shots, width)) < flip_prob
    return out


def degrade_points(
    ideal: BoolArray,
    keeps: Sequence[int],
    shots: int,
    *,
    p10: np.ndarray[Any, np.dtype[np.float64]],
    p01: np.ndarray[Any, np.dtype[np.float64]],
    rng: np.random.Generator,
) -> BoolArray:
    """``degrade`` for every parameter point of ``ideal`` shaped ``(points, k, width)``."""
    points = ideal.shape[0]
    out = np.empty((points, shots, ideal.shape[-1]), dtype=bool)
    for i in range(points):
        out[i] = degrade(ideal[i], keeps[i], shots, p10=p10, p01=p01, rng=rng)
    return out


def pauli_attenuation(
    label: str, fidelity: float, cal: Calibration | None, qubit_of_position: Sequence[int]
) -> float:
    """Factor the model puts on the expectation value of one Pauli string.

    White noise scales every non-identity Pauli by ``F``; a symmetric readout error ``r``
    scales each measured factor by ``1 - 2r`` (the asymmetric part, an offset, is ignored).
    ``label`` is little-endian: its last character acts on position 0.
    """
    support = [len(label) - 1 - i for i, ch in enumerate(label) if ch != "I"]
    if not support:
        return 1.0
    factor = fidelity
    if cal is not None:
        for pos in support:
            q = qubit_of_position[pos] if pos < len(qubit_of_position) else pos
            if 0 <= q < len(cal.readout):
                p10, p01 = cal.readout[q]
                factor *= 1.0 - (p10 + p01)
    return factor
