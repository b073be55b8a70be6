"""Local emulator of the vendors' QPU cloud APIs (IBM Qiskit Runtime, Pasqal Cloud).

The real ``qrmi``, ``qiskit-ibm-runtime`` and ``pasqal-cloud`` clients run against it
unchanged; the work runs on qiskit-aer and pulser-simulation. Importing this package is
cheap: the catalogue and state types are plain Python, the server (aiohttp) and the
simulators load only when used.

    with running_emulator() as emu:
        res = qrmi.QuantumResource.from_config(
            "fake_manila",
            qrmi.ResourceType.IBMQuantumComputeService,
            emu.qrmi_config("fake_manila"),
        )
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .catalog import CATALOG, BackendSpec, Technology, Vendor
from .config import EmulatorConfig
from .faults import Fault, FaultKind
from .state import EmulatorState, JobRecord, JobStatus, SessionRecord, SessionState

if TYPE_CHECKING:
    from .client import EmulatorClient
    from .server import Emulator, EmulatorServer, running_emulator

__all__ = [
    "CATALOG",
    "BackendSpec",
    "Emulator",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "FaultKind",
    "JobRecord",
    "JobStatus",
    "SessionRecord",
    "SessionState",
    "Technology",
    "Vendor",
    "running_emulator",
]

_LAZY = {
    "Emulator": "server",
    "EmulatorServer": "server",
    "running_emulator": "server",
    "EmulatorClient": "client",
}


def __getattr__(name: str) -> Any:
    """Load the aiohttp-based parts on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
