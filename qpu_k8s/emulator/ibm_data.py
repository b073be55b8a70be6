"""IBM backend configuration and calibration data, read from qiskit-ibm-runtime's snapshots.

The JSON files are located with ``importlib.util.find_spec`` so serving them does not
import qiskit (seconds of start-up); the package only has to be installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from .catalog import BackendSpec


class BackendDataMissing(RuntimeError):
    """qiskit-ibm-runtime (which ships the calibration snapshots) is not installed."""


@functools.cache
def _fake_backends_dir() -> Path:
    spec = importlib.util.find_spec("qiskit_ibm_runtime")
    if spec is None or not spec.submodule_search_locations:
        raise BackendDataMissing(
            "the IBM backends need qiskit-ibm-runtime installed: pip install 'qpu-k8s[emulator]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "fake_provider" / "backends"


@functools.cache
def _load(spec: BackendSpec, kind: str) -> str:
    path = _fake_backends_dir() / spec.source / f"{kind}_{spec.source}.json"
    data = json.loads(path.read_text())
    # Serve the snapshot under the emulated backend's own name.
    data["backend_name"] = spec.name
    return json.dumps(data)


def configuration(spec: BackendSpec) -> dict[str, Any]:
    """The backend configuration (``conf_<name>.json``) as a fresh dict."""
    data: dict[str, Any] = json.loads(_load(spec, "conf"))
    return data


def properties(spec: BackendSpec) -> dict[str, Any]:
    """The calibration data (``props_<name>.json``: T1/T2, gate and readout errors)."""
    data: dict[str, Any] = json.loads(_load(spec, "props"))
    return data


def processor_type(spec: BackendSpec) -> dict[str, Any]:
    conf = configuration(spec)
    proc = conf.get("processor_type") or {}
    return {"family": str(proc.get("family", "")), "revision": str(proc.get("revision", ""))}
