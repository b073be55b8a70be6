"""IBM Quantum: the Qiskit Runtime (QCS), legacy Runtime (QRS) and direct system (QS) types.

Config and secret key names were read from the qrmi 0.26 Rust core (see
``shared/notes/vendors.md``). ``target()`` answers with the backend's configuration and
properties; :func:`target_attributes` turns them into device attributes: qubit count,
processor, and the medians of the calibration (two-qubit, single-qubit and readout errors
in ppm, T1/T2 in microseconds, the newest calibration time). Error figures of 1.0 (IBM's
marker for a broken qubit or pair) are left out of the medians.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from qpu_k8s.core.values import AttributeValue, finite, median, ppm
from qpu_k8s.core.vendors.profile import ResourceType, VendorProfile

# Native entanglers first: the median of the first family present is published (Heron also
# reports fractional rzz, which would blur the CZ figure IBM itself quotes).
_TWO_QUBIT_GATES = ("cz", "ecr", "cx", "iswap", "rzz", "cp", "swap")
_ONE_QUBIT_GATES = frozenset({"sx", "x"})
_TIME_UNITS_US = {"s": 1e6, "ms": 1e3, "us": 1.0, "µs": 1.0, "ns": 1e-3}
# qrmi opens IBM sessions with this max_ttl unless *_SESSION_MAX_TTL is configured.
DEFAULT_SESSION_MAX_TTL = 28800


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
            value = finite(item.get("value"))
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
            value = finite(p.get("value"))
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
        "twoQubitErrorPpm": ppm(median(native)),
        "singleQubitErrorPpm": ppm(median(one_q)),
        "readoutErrorPpm": ppm(median(readout)),
        "t1Us": None if (m := median(t1)) is None else round(m),
        "t2Us": None if (m := median(t2)) is None else round(m),
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


def target_attributes(target: Mapping[str, Any], resource_id: str) -> dict[str, AttributeValue]:
    """Attributes from a ``target()`` answer: ``{configuration, properties}`` or bare properties."""
    del resource_id  # one backend per answer
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
        out.update(ibm_quality(target))  # bare properties
        out.setdefault("qubits", len(target["qubits"]))
    return out


def _runtime(prefix: str, rtype: ResourceType, qrmi_type: str, **extra: Any) -> VendorProfile:
    p = f"QRMI_IBM_{prefix}_"
    return VendorProfile(
        type=rtype,
        vendor="ibm",
        technology="superconducting",
        qrmi_type=qrmi_type,
        required_config=frozenset({p + "ENDPOINT", p + "IAM_ENDPOINT", p + "SERVICE_CRN"}),
        optional_config=frozenset(
            {
                p + "SESSION_MODE",
                p + "SESSION_MAX_TTL",
                p + "TIMEOUT_SECONDS",
                "QRMI_JOB_TIMEOUT_SECONDS",
            }
        ),
        secret_keys=frozenset({p + "IAM_APIKEY"}),
        credential_options=(frozenset({p + "IAM_APIKEY"}),),
        session_based=True,
        session_mode_key=p + "SESSION_MODE",
        session_ttl_key=p + "SESSION_MAX_TTL",
        default_session_ttl=DEFAULT_SESSION_MAX_TTL,
        default_session_mode="dedicated",
        # Dedicated: the session's jobs run one after another with the QPU reserved for them
        # (a calibration or benchmark run); batch: its jobs interleave with other users'.
        exclusive_session_mode="dedicated",
        shared_session_mode="batch",
        # The token is the Qiskit Runtime session id: every call on it (submit a job in it,
        # close it) needs an IAM bearer token from the API key and the instance's CRN, so
        # the id alone grants nothing (IBM shows it in the console and in job metadata).
        token_is_public_id=True,
        parse_target=target_attributes,
        **extra,
    )


_QS_AWS = ("QRMI_IBM_QS_AWS_ACCESS_KEY_ID", "QRMI_IBM_QS_AWS_SECRET_ACCESS_KEY")

PROFILES = (
    _runtime("QCS", ResourceType.IBM_QUANTUM_COMPUTE_SERVICE, "IBMQuantumComputeService"),
    _runtime(
        "QRS",
        ResourceType.QISKIT_RUNTIME_SERVICE,
        "IBMQiskitRuntimeService",
        deprecated=(
            "spec.type qiskit-runtime-service is deprecated: IBM's transition from the Qiskit "
            "Runtime Service ended on 2026-11-21. Use spec.type ibm-quantum-compute-service, "
            "with the same values under QRMI_IBM_QCS_* config keys and the Secret key "
            "QRMI_IBM_QCS_IAM_APIKEY"
        ),
    ),
    VendorProfile(
        type=ResourceType.IBM_QUANTUM_SYSTEM,
        vendor="ibm",
        technology="superconducting",
        qrmi_type="IBMQuantumSystem",
        required_config=frozenset(
            {
                "QRMI_IBM_QS_ENDPOINT",
                "QRMI_IBM_QS_IAM_ENDPOINT",
                "QRMI_IBM_QS_SERVICE_CRN",
                "QRMI_IBM_QS_S3_ENDPOINT",
                "QRMI_IBM_QS_S3_BUCKET",
                "QRMI_IBM_QS_S3_REGION",
            }
        ),
        optional_config=frozenset({"QRMI_IBM_QS_S3_ENDPOINT_FOR_QSAPI"}),
        secret_keys=frozenset({"QRMI_IBM_QS_IAM_APIKEY", *_QS_AWS}),
        credential_options=(frozenset({"QRMI_IBM_QS_IAM_APIKEY", *_QS_AWS}),),
        parse_target=target_attributes,
    ),
)
