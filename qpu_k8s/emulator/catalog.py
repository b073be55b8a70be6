"""The emulated backends, described once so every part of qpu-k8s can import them.

Pure data and the standard library only: the node agents' light image has no simulators, yet
it must know which backends the emulator offers (names, qubit counts, technology) to build
configs and device attributes. The IBM entries name a calibration snapshot that ships inside
``qiskit-ibm-runtime`` (real T1/T2, gate and readout errors); the Pasqal entries name a pulser
device whose abstract representation is served as the device specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Vendor(StrEnum):
    """Which vendor API a backend is served through."""

    IBM = "ibm"
    PASQAL = "pasqal"


class Technology(StrEnum):
    """Qubit technology, as published in the ``technology`` device attribute."""

    SUPERCONDUCTING = "superconducting"
    NEUTRAL_ATOM = "neutral-atom"


IBM_RESOURCE_TYPES = ("ibm-quantum-compute-service", "qiskit-runtime-service")
PASQAL_RESOURCE_TYPES = ("pasqal-cloud",)


@dataclass(frozen=True)
class BackendSpec:
    """One emulated backend.

    ``name`` is the vendor's backend name and therefore the QRMI resource id (for Pasqal it
    is the device type, as qrmi requires). ``source`` names the data the emulator serves:
    the ``qiskit_ibm_runtime/fake_provider/backends/<source>`` folder for IBM, the
    ``pulser.devices`` attribute for Pasqal.
    """

    name: str
    vendor: Vendor
    qubits: int
    technology: Technology
    resource_types: tuple[str, ...]
    source: str
    simulator: bool = False
    description: str = ""

    @property
    def default_resource_type(self) -> str:
        return self.resource_types[0]


CATALOG: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="fake_manila",
        vendor=Vendor.IBM,
        qubits=5,
        technology=Technology.SUPERCONDUCTING,
        resource_types=IBM_RESOURCE_TYPES,
        source="manila",
        description="IBM Falcon r5.11L calibration snapshot (ibmq_manila)",
    ),
    BackendSpec(
        name="fake_nairobi",
        vendor=Vendor.IBM,
        qubits=7,
        technology=Technology.SUPERCONDUCTING,
        resource_types=IBM_RESOURCE_TYPES,
        source="nairobi",
        description="IBM Falcon r5.11H calibration snapshot (ibm_nairobi)",
    ),
    BackendSpec(
        name="fake_lagos",
        vendor=Vendor.IBM,
        qubits=7,
        technology=Technology.SUPERCONDUCTING,
        resource_types=IBM_RESOURCE_TYPES,
        source="lagos",
        description="IBM Falcon r5.11H calibration snapshot (ibm_lagos)",
    ),
    BackendSpec(
        name="fake_torino",
        vendor=Vendor.IBM,
        qubits=133,
        technology=Technology.SUPERCONDUCTING,
        resource_types=IBM_RESOURCE_TYPES,
        source="torino",
        description="IBM Heron r1 calibration snapshot (ibm_torino)",
    ),
    BackendSpec(
        name="FRESNEL",
        vendor=Vendor.PASQAL,
        qubits=80,
        technology=Technology.NEUTRAL_ATOM,
        resource_types=PASQAL_RESOURCE_TYPES,
        source="AnalogDevice",
        description="Pasqal analog QPU, specs of pulser's AnalogDevice",
    ),
    BackendSpec(
        name="EMU_MPS",
        vendor=Vendor.PASQAL,
        qubits=80,
        technology=Technology.NEUTRAL_ATOM,
        resource_types=PASQAL_RESOURCE_TYPES,
        source="AnalogDevice",
        simulator=True,
        description="Pasqal tensor-network emulator (served by a qutip simulation)",
    ),
    BackendSpec(
        name="EMU_FREE",
        vendor=Vendor.PASQAL,
        qubits=100,
        technology=Technology.NEUTRAL_ATOM,
        resource_types=PASQAL_RESOURCE_TYPES,
        source="DigitalAnalogDevice",
        simulator=True,
        description="Pasqal free emulator, specs of pulser's DigitalAnalogDevice",
    ),
)

_BY_NAME = {spec.name: spec for spec in CATALOG}


class UnknownBackendError(KeyError):
    """A backend name that is not in the catalogue."""

    def __init__(self, name: str) -> None:
        known = ", ".join(sorted(_BY_NAME))
        super().__init__(f"unknown emulated backend {name!r}; known backends: {known}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str) -> BackendSpec:
    """Look a backend up by name; the error lists the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownBackendError(name) from None


def names() -> tuple[str, ...]:
    return tuple(spec.name for spec in CATALOG)


def by_vendor(vendor: Vendor | str) -> tuple[BackendSpec, ...]:
    return tuple(spec for spec in CATALOG if spec.vendor == Vendor(vendor))


def select(specs: tuple[BackendSpec, ...], wanted: list[str] | None) -> tuple[BackendSpec, ...]:
    """Restrict ``specs`` to ``wanted`` names (all when None), checking every name."""
    if wanted is None:
        return specs
    for name in wanted:
        get(name)
    return tuple(spec for spec in specs if spec.name in wanted)
