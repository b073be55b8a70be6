"""Pulser sequences on pulser-simulation (qutip), and the device specs the server publishes.

Imports of pulser happen inside the functions (about 2 s), on a worker thread.
"""

# The simulators load inside the functions, on worker threads: importing this module is cheap.

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.Lock()


class SequenceInputError(ValueError):
    """The batch's sequence cannot run on this device (bad JSON, too many atoms...)."""


def device_specs(source: str) -> str:
    """The pulser abstract representation (a JSON string) of ``pulser.devices.<source>``."""
    with _lock:
        return _device_specs(source)


@functools.cache
def _device_specs(source: str) -> str:
    import pulser.devices

    device = getattr(pulser.devices, source)
    specs: str = device.to_abstract_repr()
    return specs


def device_name(source: str) -> str:
    with _lock:
        return _device_name(source)


@functools.cache
def _device_name(source: str) -> str:
    import pulser.devices

    return str(getattr(pulser.devices, source).name)


def run_sequence(
    sequence_json: str,
    runs: int,
    variables: dict[str, Any] | None,
    required_device: str | None,
    max_atoms: int,
) -> dict[str, Any]:
    """Simulate ``runs`` shots; returns the Pasqal result document (counter and raw)."""
    from pulser import Sequence
    from pulser.backend import BitStrings
    from pulser_simulation import QutipBackendV2, QutipConfig

    try:
        seq = Sequence.from_abstract_repr(sequence_json)
    except Exception as exc:
        raise SequenceInputError(f"sequence is not a valid pulser abstract repr: {exc}") from exc
    if seq.is_parametrized() or seq.is_register_mappable():
        try:
            seq = seq.build(**(variables or {}))
        except Exception as exc:
            raise SequenceInputError(f"cannot build the sequence with {variables}: {exc}") from exc
    if required_device is not None and seq.device.name != required_device:
        raise SequenceInputError(
            f"the sequence targets device {seq.device.name!r}, this QPU is {required_device!r}"
        )
    atoms = len(seq.register.qubit_ids)
    if atoms > max_atoms:
        raise SequenceInputError(
            f"the sequence has {atoms} atoms; this emulator simulates at most {max_atoms}"
        )
    if runs < 1:
        raise SequenceInputError("runs must be >= 1")
    config = QutipConfig(observables=[BitStrings(num_shots=runs)])
    results = QutipBackendV2(seq, config=config).run()
    counter = {str(k): int(v) for k, v in results.final_bitstrings.items()}
    raw = [bits for bits, n in sorted(counter.items()) for _ in range(n)]
    return {"counter": counter, "raw": raw}
