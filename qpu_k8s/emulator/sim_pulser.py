"""Pulser sequences on pulser-simulation (qutip), and the device specs the server publishes.

Everything here runs in a worker process (``workers.py``); pulser itself (about 2 s to import)
is loaded once by the workers' fork server, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from .workers import InputError

_lock = threading.Lock()


class SequenceInputError(InputError):
    """The batch's sequence cannot run on this device (bad JSON, too many atoms...)."""


def preload() -> None:
    """Import what the jobs use (called once in the workers' fork server)."""
    import pulser.backend  # noqa: F401
    import pulser_simulation  # noqa: F401


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
    *,
    mimic_qpu: bool = False,
) -> dict[str, Any]:
    """Simulate ``runs`` shots; returns the Pasqal result document (counter and raw).

    ``mimic_qpu`` applies the checks a real QPU makes before it accepts a sequence (a
    register from a layout where the device requires one, a calibrated layout where it
    takes no new ones), as pulser's ``QPUBackend`` does on the client.
    """
    from pulser import QPUBackend, Sequence
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
    if mimic_qpu:
        try:
            QPUBackend.validate_sequence(seq, mimic_qpu=True)
        except (TypeError, ValueError) as exc:
            raise SequenceInputError(str(exc)) from exc
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


def run_job(
    sequence_json: str,
    runs: int,
    variables: dict[str, Any] | None,
    required_source: str | None,
    max_atoms: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One job of a batch, as the job runner calls it: ``(result document, report)``.

    ``required_source`` names the pulser device a QPU backend runs (None for the cloud
    emulators, which take any device); a QPU also gets the QPU checks.
    """
    required = device_name(required_source) if required_source else None
    result = run_sequence(
        sequence_json, runs, variables, required, max_atoms, mimic_qpu=required is not None
    )
    atoms = len(result["raw"][0]) if result["raw"] else None
    return result, {"methods": ["qutip"], "atoms": atoms}
