"""Device attributes of a QPU lane, as published in DRA ResourceSlices.

Shared by the DRA node driver (node-bound backends) and the operator (cluster-wide slices of
shared backends), so a CEL selector sees the same names and units wherever a QPU is published.

Sources, later ones winning: the QRMI type table (vendor, technology), the backend's
``target()`` (IBM: ``{"configuration", "properties"}``; Pasqal: the pulser device specs) and
``metadata()``, then the QuantumBackend's ``spec.attributes`` overrides. The identity
attributes (``backend``, ``resourceId``, ``resourceType``, ``lane``) always come from the spec.

DRA attribute values are int, bool, string or semver only: there are no floats. Units:

=====================  ======  ==========================================================
attribute              type    meaning
=====================  ======  ==========================================================
vendor                 string  ibm, pasqal, ... (from the QRMI type)
resourceType           string  QRMI resource type, e.g. ibm-quantum-compute-service
backend                string  QuantumBackend object name (DNS label)
resourceId             string  QRMI resource id (vendor's backend name, e.g. ibm_torino)
technology             string  superconducting, neutral-atom, ...
qubits                 int     qubit (or atom) count
lane                   int     lane index, 0-based (one device per lane)
simulator              bool    true for emulators/simulators
twoQubitErrorPpm       int     median two-qubit gate error, parts per million
singleQubitErrorPpm    int     median single-qubit (sx/x) gate error, ppm
readoutErrorPpm        int     median readout error, ppm
t1Us, t2Us             int     median T1 / T2, microseconds
calibrationTime        int     unix seconds of the newest calibration figure
processor              string  processor family/revision, when the vendor names it
dimensions             int     neutral atoms: register dimensions (2 or 3)
minAtomDistanceNm      int     neutral atoms: minimum atom spacing, nanometres
=====================  ======  ==========================================================

Error figures of 1.0 (IBM's marker for a broken qubit or pair) are left out of the
medians. Where a vendor gives no figure the attribute is absent: a selector on it should
guard with ``has()`` or match nothing (Kubernetes treats a missing key as a CEL error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.values import (
    ATTR_NAME_RE,
    MAX_ATTRIBUTE_STRING,
    MAX_DEVICE_ATTRIBUTES,
    AttributeValue,
)
from qpu_k8s.core.vendors import profile

IDENTITY = frozenset({"backend", "resourceId", "resourceType", "lane"})


class InvalidAttributesError(ValueError):
    """An attribute set that DRA would reject (too many, bad name, value too long)."""


def target_attributes(
    backend: QuantumBackend, target: Mapping[str, Any] | None
) -> dict[str, AttributeValue]:
    """Attributes derived from ``backend``'s ``target()`` answer, by its vendor's profile."""
    return profile(backend.spec.type).target_attributes(target, backend.spec.resource_id)


def device_attributes(
    backend: QuantumBackend,
    lane: int,
    target: Mapping[str, Any] | None = None,
    *,
    probed: Mapping[str, AttributeValue] | None = None,
) -> dict[str, AttributeValue]:
    """All attributes of one lane of ``backend`` (unqualified names, in our driver's domain).

    ``probed``: the ``target_attributes()`` of an earlier ``target()`` answer, used instead
    of ``target``, so a caller need not keep the raw answer (megabytes of calibration data
    for a large device) just to derive a few numbers again.
    """
    spec = backend.spec
    vendor = profile(spec.type)
    attrs: dict[str, AttributeValue] = {
        "vendor": vendor.vendor,
        "technology": vendor.technology,
        "simulator": vendor.simulator(spec.resource_id),
    }
    attrs.update(probed if probed is not None else target_attributes(backend, target))
    attrs.update({k: v for k, v in spec.attributes.items() if k not in IDENTITY})
    attrs.update(
        {
            "backend": backend.name,
            "resourceId": spec.resource_id,
            "resourceType": spec.type.value,
            "lane": lane,
        }
    )
    check_attributes(attrs)
    return attrs


def check_attributes(attrs: Mapping[str, AttributeValue], capacities: int = 0) -> None:
    """Raise InvalidAttributesError naming what DRA's ResourceSlice validation would refuse."""
    if len(attrs) + capacities > MAX_DEVICE_ATTRIBUTES:
        raise InvalidAttributesError(
            f"{len(attrs)} attributes + {capacities} capacities exceed the DRA limit of "
            f"{MAX_DEVICE_ATTRIBUTES} per device; drop some from spec.attributes"
        )
    for name, value in attrs.items():
        if not ATTR_NAME_RE.fullmatch(name):
            raise InvalidAttributesError(
                f"attribute name {name!r} is not a C identifier of <= 32 chars"
            )
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_STRING:
            raise InvalidAttributesError(
                f"attribute {name!r}: value longer than {MAX_ATTRIBUTE_STRING} chars"
            )
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise InvalidAttributesError(f"attribute {name!r}: {value} does not fit in int64")


def to_api(attrs: Mapping[str, AttributeValue]) -> dict[str, dict[str, AttributeValue]]:
    """The ``DeviceAttribute`` form: ``{"qubits": {"int": 133}, "vendor": {"string": ...}}``."""
    out: dict[str, dict[str, AttributeValue]] = {}
    for name in sorted(attrs):
        value = attrs[name]
        if isinstance(value, bool):
            out[name] = {"bool": value}
        elif isinstance(value, int):
            out[name] = {"int": value}
        else:
            out[name] = {"string": value}
    return out


def from_api(api: Mapping[str, Mapping[str, Any]]) -> dict[str, AttributeValue]:
    """Inverse of :func:`to_api` (``version`` values come back as strings)."""
    out: dict[str, AttributeValue] = {}
    for name, typed in api.items():
        for key in ("bool", "int", "string", "version"):
            if key in typed and typed[key] is not None:
                out[name] = typed[key]
                break
    return out
