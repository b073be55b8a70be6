"""Device attributes: names, DRA types and units, from real IBM calibration and pulser specs."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest

from qpu_k8s.core.values import MAX_DEVICE_ATTRIBUTES as MAX_ATTRIBUTES
from qpu_k8s.core.vendors import ResourceType, profile
from qpu_k8s.core.vendors.ibm import ibm_quality
from qpu_k8s.resourceslices.attributes import (
    InvalidAttributesError,
    check_attributes,
    device_attributes,
    from_api,
    to_api,
)
from testsupport.dra import ibm_model, ibm_target, pasqal_model, pulser_target

IBM = profile(ResourceType.IBM_QUANTUM_COMPUTE_SERVICE)
PASQAL = profile(ResourceType.PASQAL_CLOUD)


def _median_param(props: dict[str, Any], gate: str, param: str = "gate_error") -> float:
    values = [
        p["value"]
        for g in props["gates"]
        if g["gate"] == gate
        for p in g["parameters"]
        if p["name"] == param and p["value"] < 1
    ]
    return float(statistics.median(values))


def _median_qubit(props: dict[str, Any], name: str) -> float:
    return float(
        statistics.median(
            item["value"] for q in props["qubits"] for item in q if item["name"] == name
        )
    )


def test_ibm_torino_quality_figures_in_documented_units() -> None:
    target = ibm_target("torino")
    props = target["properties"]
    attrs = device_attributes(ibm_model(lanes=2), 1, target)
    assert attrs["qubits"] == 133
    assert attrs["vendor"] == "ibm"
    assert attrs["technology"] == "superconducting"
    assert attrs["simulator"] is False
    assert attrs["lane"] == 1
    assert attrs["backend"] == "ibm-torino"
    assert attrs["resourceId"] == "fake_torino"
    assert attrs["resourceType"] == "ibm-quantum-compute-service"
    assert attrs["processor"] == "Heron r1"
    # Heron's native entangler is CZ: its median is published, not the fractional RZZ.
    assert attrs["twoQubitErrorPpm"] == round(_median_param(props, "cz") * 1e6)
    assert attrs["singleQubitErrorPpm"] == round(
        statistics.median(
            p["value"]
            for g in props["gates"]
            if g["gate"] in ("sx", "x")
            for p in g["parameters"]
            if p["name"] == "gate_error" and p["value"] < 1
        )
        * 1e6
    )
    assert attrs["t1Us"] == round(_median_qubit(props, "T1"))
    assert attrs["t2Us"] == round(_median_qubit(props, "T2"))
    assert attrs["readoutErrorPpm"] == round(_median_qubit(props, "readout_error") * 1e6)
    assert isinstance(attrs["calibrationTime"], int)
    assert attrs["calibrationTime"] > 1.7e9


@pytest.mark.parametrize(("source", "qubits"), [("manila", 5), ("nairobi", 7), ("lagos", 7)])
def test_every_emulated_ibm_backend_gets_quality(source: str, qubits: int) -> None:
    attrs = IBM.target_attributes(ibm_target(source), f"fake_{source}")
    assert attrs["qubits"] == qubits
    for key in ("twoQubitErrorPpm", "readoutErrorPpm", "t1Us", "t2Us"):
        value = attrs[key]
        assert isinstance(value, int), key
        assert value > 0, key
    # Falcon's entangler is CX.
    assert attrs["twoQubitErrorPpm"] == round(
        _median_param(ibm_target(source)["properties"], "cx") * 1e6
    )


def test_broken_pairs_and_units_other_than_microseconds() -> None:
    props = {
        "qubits": [
            [{"name": "T1", "unit": "ms", "value": 0.2}, {"name": "readout_error", "value": 0.01}],
            [{"name": "T1", "unit": "us", "value": 100.0}, {"name": "readout_error", "value": 1.0}],
            [{"name": "T1", "unit": "ns", "value": 300000.0}],
        ],
        "gates": [
            {"gate": "cz", "qubits": [0, 1], "parameters": [{"name": "gate_error", "value": 1.0}]},
            {
                "gate": "cz",
                "qubits": [1, 2],
                "parameters": [{"name": "gate_error", "value": 0.004}],
            },
        ],
    }
    q = ibm_quality(props)
    assert q["t1Us"] == 200  # median of 200, 100, 300 us
    assert q["readoutErrorPpm"] == 10_000  # 1.0 (broken) left out
    assert q["twoQubitErrorPpm"] == 4_000
    assert "calibrationTime" not in q


def test_pasqal_specs_give_atoms_and_no_invented_quality() -> None:
    fresnel = device_attributes(pasqal_model(), 0, pulser_target("AnalogDevice"))
    assert fresnel["qubits"] == 80
    assert fresnel["technology"] == "neutral-atom"
    assert fresnel["vendor"] == "pasqal"
    assert fresnel["simulator"] is False
    assert fresnel["minAtomDistanceNm"] == 5000
    assert fresnel["dimensions"] == 2
    assert not {"twoQubitErrorPpm", "t1Us", "readoutErrorPpm"} & fresnel.keys()
    emu = device_attributes(pasqal_model("emu-free", "EMU_FREE"), 0, None)
    assert emu["simulator"] is True
    assert "qubits" not in emu


def test_spec_attributes_override_probed_but_not_identity() -> None:
    backend = ibm_model(attributes={"qubits": 127, "lane": 9, "backend": "x", "site": "lab-1"})
    attrs = device_attributes(backend, 0, ibm_target("torino"))
    assert attrs["qubits"] == 127
    assert attrs["site"] == "lab-1"
    assert attrs["lane"] == 0
    assert attrs["backend"] == "ibm-torino"


def test_api_form_keeps_bool_and_int_apart() -> None:
    attrs: dict[str, bool | int | str] = {"simulator": False, "qubits": 0, "vendor": "ibm"}
    api = to_api(attrs)
    assert api == {"qubits": {"int": 0}, "simulator": {"bool": False}, "vendor": {"string": "ibm"}}
    assert from_api(api) == attrs


def test_limits_are_checked_with_the_reason() -> None:
    with pytest.raises(InvalidAttributesError, match="exceed the DRA limit of 32"):
        check_attributes({f"a{i}": i for i in range(MAX_ATTRIBUTES + 1)})
    with pytest.raises(InvalidAttributesError, match="longer than 64"):
        check_attributes({"site": "x" * 65})
    with pytest.raises(InvalidAttributesError, match="C identifier"):
        check_attributes({"bad-name": 1})


def test_pasqal_target_as_qrmi_returns_it() -> None:
    """qrmi 0.26 returns the vendor's records with the specs as a JSON string."""
    specs = json.dumps(pulser_target("DigitalAnalogDevice"))
    wrapped = {
        "value": [
            {"device_type": "FRESNEL", "specs": json.dumps(pulser_target("AnalogDevice"))},
            {"device_type": "EMU_FREE", "specs": specs},
        ]
    }
    assert PASQAL.target_attributes(wrapped, "EMU_FREE")["qubits"] == 100
    assert PASQAL.target_attributes(wrapped, "FRESNEL")["qubits"] == 80
    assert (
        PASQAL.target_attributes({"device_type": "FRESNEL", "specs": specs}, "X")["qubits"] == 100
    )
    assert PASQAL.target_attributes({"value": "not json"}, "FRESNEL") == {}
