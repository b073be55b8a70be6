"""The QuantumBackend model: valid input parses, every invalid input names its field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.core.model import (
    MAX_NAME_LEN,
    AccessMode,
    InvalidBackendError,
    dump_backend_config,
    load_backend_config,
    parse_backend,
    parse_backend_config,
    split_device_id,
)
from qpu_k8s.core.vendors import ResourceType


def test_valid_backend_parses(ibm_doc: dict[str, Any]) -> None:
    b = parse_backend(ibm_doc)
    assert b.spec.type is ResourceType.IBM_QUANTUM_COMPUTE_SERVICE
    assert b.spec.access is AccessMode.SHARED
    assert b.device_ids() == ["ibm-torino-lane-0", "ibm-torino-lane-1"]
    assert split_device_id("ibm-torino-lane-1") == ("ibm-torino", 1)


Mutation = Callable[[dict[str, Any]], None]

CASES: list[tuple[str, Mutation, str, str]] = [
    ("lanes-zero", lambda d: d["spec"].update(lanes=0), "spec.lanes", "greater than or equal to 1"),
    ("lanes-high", lambda d: d["spec"].update(lanes=65), "spec.lanes", "less than or equal to 64"),
    (
        "node-bound-no-selector",
        lambda d: d["spec"].update(access="node-bound"),
        "spec.nodeSelector",
        "needs a nodeSelector",
    ),
    (
        "secret-in-config",
        lambda d: d["spec"]["config"].update(QRMI_IBM_QCS_IAM_APIKEY="k"),
        "spec.config",
        "put it in the Secret",
    ),
    ("unknown-field", lambda d: d["spec"].update(lane=2), "spec.lane", "unknown field"),
    ("bad-name", lambda d: d.update(name="IBM_Torino"), "name", "not a DNS label"),
    ("long-name", lambda d: d.update(name="a" * (MAX_NAME_LEN + 1)), "name", "at most"),
    (
        "pasqal-needs-device-type",
        lambda d: d["spec"].update(
            type="pasqal-cloud", config={"QRMI_PASQAL_CLOUD_PROJECT_ID": "p"}
        ),
        "spec.resourceId",
        "device type",
    ),
    (
        "missing-secret-ref",
        lambda d: d["spec"].pop("credentialsSecretRef"),
        "spec.credentialsSecretRef",
        "QRMI_IBM_QCS_IAM_APIKEY",
    ),
    (
        "missing-required-config",
        lambda d: d["spec"]["config"].pop("QRMI_IBM_QCS_ENDPOINT"),
        "spec.config",
        "QRMI_IBM_QCS_ENDPOINT",
    ),
    (
        "unknown-config-key",
        lambda d: d["spec"]["config"].update(QRMI_IBM_QCS_ENDPIONT="x"),
        "spec.config",
        "unknown key(s) QRMI_IBM_QCS_ENDPIONT",
    ),
    ("unknown-type", lambda d: d["spec"].update(type="dwave"), "spec.type", "pasqal-cloud"),
    (
        "wrong-type",
        lambda d: d["spec"].update(probeIntervalSeconds="often"),
        "spec.probeIntervalSeconds",
        "valid integer",
    ),
    (
        "bad-attribute",
        lambda d: d["spec"].update(attributes={"two words": 1}),
        "spec.attributes",
        "C identifier",
    ),
    (
        "float-attribute",
        lambda d: d["spec"].update(attributes={"fidelity": 0.99}),
        "spec.attributes.fidelity",
        "",
    ),
    (
        "bad-resource-id",
        lambda d: d["spec"].update(resourceId="ibm torino"),
        "spec.resourceId",
        "not a QRMI resource id",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_backend_names_field(
    ibm_doc: dict[str, Any], mutate: Mutation, field: str, text: str
) -> None:
    mutate(ibm_doc)
    with pytest.raises(InvalidBackendError) as err:
        parse_backend(ibm_doc, "test")
    paths = [p for p, _ in err.value.problems]
    assert any(p.startswith(field) for p in paths), err.value.problems
    assert text in str(err.value)


def test_node_bound_with_selector_ok(ibm_doc: dict[str, Any]) -> None:
    ibm_doc["spec"].update(access="node-bound", nodeSelector={"qpu.example.com/attached": "true"})
    assert parse_backend(ibm_doc).spec.access is AccessMode.NODE_BOUND


def test_config_roundtrip(tmp_path: Path, ibm_doc: dict[str, Any]) -> None:
    b = parse_backend(ibm_doc)
    path = tmp_path / "backends.yaml"
    path.write_text(dump_backend_config([b]))
    cfg = load_backend_config(path)
    assert cfg.backends == [b]


def test_config_duplicate_names(ibm_doc: dict[str, Any]) -> None:
    text = dump_backend_config([parse_backend(ibm_doc)] * 2)
    with pytest.raises(InvalidBackendError, match="appears twice"):
        parse_backend_config(text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("backends: [", "not valid YAML"), ("- a\n- b\n", "mapping"), ("backends: 3", "backends")],
)
def test_config_malformed(text: str, needle: str) -> None:
    with pytest.raises(InvalidBackendError) as err:
        parse_backend_config(text, "cm")
    assert needle in str(err.value)


def test_empty_config_is_no_backends() -> None:
    assert parse_backend_config("").backends == []
