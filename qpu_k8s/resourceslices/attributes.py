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

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from qpu_k8s.core.model import AttributeValue, QuantumBackend
from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.core.vendors import info

MAX_ATTRIBUTES = 32  # attributes + capacities per device (ResourceSlice validation)
MAX_STRING = 64
PPM = 1_000_000

IDENTITY = frozenset({"backend", "resourceId", "resourceType", "lane"})
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{0,31}$")
# Native entanglers first: the median of the first family present is published (Heron also
# reports fractional rzz, which would blur the CZ figure IBM itself quotes).
_TWO_QUBIT_GATES = ("cz", "ecr", "cx", "iswap", "rzz", "cp", "swap")
_ONE_QUBIT_GATES = frozenset({"sx", "x"})
_TIME_UNITS_US = {"s": 1e6, "ms": 1e3, "us": 1.0, "µs": 1.0, "ns": 1e-3}


class InvalidAttributesError(ValueError):
    """An attribute set that DRA would reject (too many, bad name, value too long)."""


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


def _ppm(error: float | None) -> int | None:
    return None if error is None else round(error * PPM)


def _epoch(date: Any) -> int | None:
    if not isinstance(date, str):
        return None
    try:
        return int(datetime.fromisoformat(date).timestamp())
    except ValueError:
        return None


def ibm_quality(properties: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Quality figures from IBM backend properties (the ``props_*.json`` / API shape)."""
    out: dict[str, AttributeValue] = {}
    t1: list[float] = []
    t2: list[float] = []
    readout: list[float] = []
    dates: list[int] = []
    for qubit in properties.get("qubits") or []:
        if not isinstance(qubit, list):
            continue
        for item in qubit:
            if not isinstance(item, Mapping):
                continue
            value = _finite(item.get("value"))
            if value is None:
                continue
            name = item.get("name")
            if name in ("T1", "T2"):
                scale = _TIME_UNITS_US.get(str(item.get("unit", "us")))
                if scale is None or value <= 0:
                    continue
                (t1 if name == "T1" else t2).append(value * scale)
            elif name == "readout_error" and 0 <= value < 1:
                readout.append(value)
            else:
                continue
            if (ts := _epoch(item.get("date"))) is not None:
                dates.append(ts)
    one_q: list[float] = []
    two_q: dict[str, list[float]] = {}
    for gate in properties.get("gates") or []:
        if not isinstance(gate, Mapping):
            continue
        kind = gate.get("gate")
        qubits = gate.get("qubits") or []
        for p in gate.get("parameters") or []:
            if not isinstance(p, Mapping) or p.get("name") != "gate_error":
                continue
            value = _finite(p.get("value"))
            if value is None or not 0 <= value < 1:
                continue
            if kind in _TWO_QUBIT_GATES and len(qubits) == 2:
                two_q.setdefault(str(kind), []).append(value)
            elif kind in _ONE_QUBIT_GATES and len(qubits) == 1:
                one_q.append(value)
            else:
                continue
            if (ts := _epoch(p.get("date"))) is not None:
                dates.append(ts)
    native = next((two_q[g] for g in _TWO_QUBIT_GATES if two_q.get(g)), [])
    figures: dict[str, int | None] = {
        "twoQubitErrorPpm": _ppm(_median(native)),
        "singleQubitErrorPpm": _ppm(_median(one_q)),
        "readoutErrorPpm": _ppm(_median(readout)),
        "t1Us": None if (m := _median(t1)) is None else round(m),
        "t2Us": None if (m := _median(t2)) is None else round(m),
        "calibrationTime": max(dates) if dates else None,
    }
    out.update({k: v for k, v in figures.items() if v is not None})
    return out


def ibm_configuration(conf: Mapping[str, Any]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    n = conf.get("n_qubits")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        out["qubits"] = n
    if isinstance(conf.get("simulator"), bool):
        out["simulator"] = conf["simulator"]
    processor = conf.get("processor_type")
    if isinstance(processor, Mapping) and processor.get("family"):
        family = str(processor["family"])
        revision = processor.get("revision")
        out["processor"] = f"{family} r{revision}" if revision is not None else family
    elif isinstance(conf.get("sample_name"), str) and conf["sample_name"]:
        # e.g. "family: Heron, revision: 1"
        parts = dict(
            (k.strip(), v.strip())
            for k, _, v in (p.partition(":") for p in conf["sample_name"].split(","))
        )
        if parts.get("family"):
            rev = parts.get("revision")
            out["processor"] = f"{parts['family']} r{rev}" if rev else parts["family"]
    return out


def pulser_specs(specs: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Figures from a pulser abstract-repr device (what Pasqal's ``target()`` returns)."""
    out: dict[str, AttributeValue] = {}
    n = specs.get("max_atom_num")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        out["qubits"] = n
    dims = specs.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool):
        out["dimensions"] = dims
    dist = _finite(specs.get("min_atom_distance"))  # micrometres in pulser
    if dist is not None and dist > 0:
        out["minAtomDistanceNm"] = round(dist * 1000)
    return out


def _pulser_device(target: Any, resource_id: str | None) -> Mapping[str, Any] | None:
    """The pulser device dict inside a Pasqal ``target()`` answer, whatever the wrapping.

    qrmi 0.26 hands back the vendor's ``data``: a ``{"device_type", "specs"}`` record (or a
    list of them, from the public-specs route), where ``specs`` is a JSON *string*.
    """
    if isinstance(target, str):
        try:
            target = json.loads(target)
        except json.JSONDecodeError:
            return None
    if isinstance(target, list):
        records = [r for r in target if isinstance(r, Mapping)]
        chosen = [r for r in records if r.get("device_type") == resource_id] or records[:1]
        return _pulser_device(chosen[0], resource_id) if chosen else None
    if not isinstance(target, Mapping):
        return None
    if "max_atom_num" in target or "channels" in target:
        return target
    for key in ("specs", "value", "data"):
        if key in target:
            return _pulser_device(target[key], resource_id)
    return None


def target_attributes(
    target: Mapping[str, Any] | None, resource_id: str | None = None
) -> dict[str, AttributeValue]:
    """Attributes derived from a ``QrmiClient.target()`` answer of any known vendor shape.

    ``resource_id`` picks the right record when a Pasqal answer lists several devices.
    """
    if not target:
        return {}
    out: dict[str, AttributeValue] = {}
    conf = target.get("configuration")
    props = target.get("properties")
    if isinstance(conf, Mapping) or isinstance(props, Mapping):
        if isinstance(conf, Mapping):
            out.update(ibm_configuration(conf))
        if isinstance(props, Mapping):
            out.update(ibm_quality(props))
            if "qubits" not in out and isinstance(props.get("qubits"), list):
                out["qubits"] = len(props["qubits"])
    elif isinstance(target.get("qubits"), list) and isinstance(target.get("gates"), list):
        out.update(ibm_quality(target))  # bare IBM properties
        out.setdefault("qubits", len(target["qubits"]))
    elif (device := _pulser_device(target, resource_id)) is not None:
        out.update(pulser_specs(device))
    return out


def metadata_attributes(metadata: Mapping[str, str] | None) -> dict[str, AttributeValue]:
    """Nothing in qrmi 0.26 metadata is a stable device property (it holds the session id)."""
    del metadata
    return {}


def device_attributes(
    backend: QuantumBackend,
    lane: int,
    target: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    *,
    probed: Mapping[str, AttributeValue] | None = None,
) -> dict[str, AttributeValue]:
    """All attributes of one lane of ``backend`` (unqualified names, in our driver's domain).

    ``probed``: the ``target_attributes()`` of an earlier ``target()`` answer, used instead
    of ``target``, so a caller need not keep the raw answer (megabytes of calibration data
    for a large device) just to derive a few numbers again.
    """
    spec = backend.spec
    t = info(spec.type)
    attrs: dict[str, AttributeValue] = {"vendor": t.vendor, "technology": t.technology}
    if t.vendor == "pasqal":
        attrs["simulator"] = spec.resource_id.startswith("EMU_")
    attrs.update(probed if probed is not None else target_attributes(target, spec.resource_id))
    attrs.update(metadata_attributes(metadata))
    attrs.setdefault("simulator", False)
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
    if len(attrs) + capacities > MAX_ATTRIBUTES:
        raise InvalidAttributesError(
            f"{len(attrs)} attributes + {capacities} capacities exceed the DRA limit of "
            f"{MAX_ATTRIBUTES} per device; drop some from spec.attributes"
        )
    for name, value in attrs.items():
        if not _NAME.fullmatch(name):
            raise InvalidAttributesError(
                f"attribute name {name!r} is not a C identifier of <= 32 chars"
            )
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise InvalidAttributesError(
                f"attribute {name!r}: value longer than {MAX_STRING} chars"
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


def health_attributes(health: Health) -> dict[str, AttributeValue]:
    """Optional live fields (not published by default: every flip would rewrite the slice)."""
    return {"healthy": health.healthy, "status": health.status[:MAX_STRING]}
