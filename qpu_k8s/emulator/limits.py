"""Cheap checks of a job request against the emulator's limits, before anything is queued.

They read the request body only (JSON, OpenQASM 3 text, pulser's abstract representation)
with the standard library, so the server refuses an over-limit job at submission, with the
vendor's error shape, without importing a simulator. What they cannot see (a circuit sent
as QPY, a register built from variables) is checked again in the worker, where a refusal
fails the job with its reason instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

# An OpenQASM 3 physical qubit reference: ``$12`` (what ISA circuits from qrmi use).
_PHYSICAL_QUBIT = re.compile(r"\$(\d+)")


def ibm_shots(params: dict[str, Any], default: int) -> list[int]:
    """The shot counts a Runtime sampler/executor job asks for (one per pub)."""
    options = params.get("options") if isinstance(params.get("options"), dict) else {}
    job_shots = params.get("shots") or (options or {}).get("default_shots") or default
    out: list[int] = []
    for pub in params.get("pubs") or []:
        if isinstance(pub, list | tuple) and len(pub) >= 3 and isinstance(pub[2], int):
            out.append(pub[2])
        elif isinstance(job_shots, int):
            out.append(job_shots)
    program = params.get("quantum_program")
    if isinstance(program, dict) and isinstance(program.get("shots"), int):
        out.append(program["shots"])
    return out


def qasm_qubits(params: dict[str, Any]) -> int:
    """Most distinct physical qubits any OpenQASM 3 pub touches (0 if none is QASM text)."""
    widest = 0
    for pub in params.get("pubs") or []:
        circuit = pub[0] if isinstance(pub, list | tuple) and pub else pub
        if isinstance(circuit, str):
            widest = max(widest, len(set(_PHYSICAL_QUBIT.findall(circuit))))
    return widest


def _sequence_doc(sequence: str) -> dict[str, Any]:
    try:
        doc = json.loads(sequence)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def sequence_atoms(sequence: str) -> int | None:
    """Atoms in a pulser abstract-repr sequence, None when the JSON does not say."""
    register = _sequence_doc(sequence).get("register")
    return len(register) if isinstance(register, list) else None


def sequence_without_layout(sequence: str) -> bool:
    """True when a valid-looking sequence's register was not built from a RegisterLayout."""
    doc = _sequence_doc(sequence)
    return "register" in doc and "layout" not in doc
