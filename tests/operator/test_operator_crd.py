"""The CRD tiers that need no cluster.

* generation: the committed YAML is what the models generate (stale CRD = failing test);
* Kubernetes' own schema for CRDs (kubernetes-validate, 1.34 and 1.37, strict) accepts it;
* structural-schema rules hold (what a 1.20+ apiserver requires);
* schema tier: the openAPIV3Schema (evaluated with jsonschema) rejects bad fields by path;
* CEL tier: the ``x-kubernetes-validations`` rules, evaluated with cel-python after
  structural defaulting, reject what the model's cross-field checks reject, naming the field;
* parity: for generated specs, "model accepts" == "schema and CEL accept" (one source of truth).

What this does not prove: that a 1.25+ apiserver compiles the rules within its CEL cost
budget (no such apiserver here; the maps are bounded with maxProperties for that reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpu_k8s.core.model import InvalidBackendError, QuantumBackend
from qpu_k8s.core.vendors import PROFILES
from qpu_k8s.operator import crd
from testsupport.operator import cel_errors, cr, schema_errors

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples" / "backends").glob("*.yaml"))
SCHEMA = crd.openapi_schema()

IBM = {
    "resourceId": "ibm_torino",
    "type": "ibm-quantum-compute-service",
    "config": {
        "QRMI_IBM_QCS_ENDPOINT": "https://q.example/api/v1",
        "QRMI_IBM_QCS_IAM_ENDPOINT": "https://iam.example",
        "QRMI_IBM_QCS_SERVICE_CRN": "crn:v1:x",
    },
    "credentialsSecretRef": {"name": "ibm-creds"},
}


def _model_problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        QuantumBackend.from_object(obj)
    except InvalidBackendError as err:
        return err.problems
    return []


def test_committed_crd_file_is_current() -> None:
    path = REPO / "manifests" / "crd" / crd.OUTPUT
    assert path.read_text(encoding="utf-8") == crd.render(), (
        f"{path} is stale: run `python -m qpu_k8s.operator.crd`"
    )
    assert crd.main(["--check", "--output-dir", str(REPO / "manifests" / "crd")]) == 0


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    assert crd.main(["--output-dir", str(tmp_path)]) == 0
    assert crd.main(["--check", "--output-dir", str(tmp_path)]) == 0
    target = tmp_path / "quantumbackends.yaml"
    target.write_text(target.read_text().replace("maximum: 64", "maximum: 65"))
    assert crd.main(["--check", "--output-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("version", ["1.34", "1.37"])
def test_crd_is_valid_for_kubernetes(version: str) -> None:
    kubernetes_validate.validate(crd.crd(), version, strict=True)


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for k, sub in (schema.get("properties") or {}).items():
        out += _nodes(sub, f"{path}.{k}")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _nodes(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        out += _nodes(schema["items"], f"{path}[]")
    return out


def test_schema_is_structural_and_explained() -> None:
    for path, node in _nodes(SCHEMA):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs"} & node.keys(), path
        assert node.get("additionalProperties") is not False, path
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert "type" in node or untyped_ok, f"{path} has no type"
    for name, node in SCHEMA["properties"]["spec"]["properties"].items():
        assert len(node.get("description", "")) > 10, f"spec.{name}: kubectl explain needs text"
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["type"]["enum"] == [t.value for t in PROFILES]
    assert (spec["lanes"]["minimum"], spec["lanes"]["maximum"]) == (1, 64)
    assert spec["access"]["default"] == "shared"


def test_printer_columns_and_status_subresource() -> None:
    version = crd.crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Type", "Access", "Qubits", "Lanes", "Ready", "Age"} <= cols.keys()
    assert cols["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    conds = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conds["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_schema_cel_and_model(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert schema_errors(SCHEMA, doc) == []
        assert cel_errors(SCHEMA, doc) == []
        QuantumBackend.from_object(doc)
        text = yaml.safe_dump(doc)
        for t in PROFILES.values():
            for key in t.secret_keys:
                assert key not in doc["spec"].get("config", {}), "examples hold no secrets"
        assert "APIKEY:" not in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lanes": 0}, "spec.lanes"),
        ({"lanes": 65}, "spec.lanes"),
        ({"probeIntervalSeconds": 1}, "spec.probeIntervalSeconds"),
        ({"type": "d-wave"}, "spec.type"),
        ({"access": "everywhere"}, "spec.access"),
        ({"resourceId": "has space"}, "spec.resourceId"),
        ({"credentialsSecretRef": {"name": "Not_A_Name"}}, "spec.credentialsSecretRef.name"),
        ({"nodeSelector": {"zone": "bad value!"}}, "spec.nodeSelector.zone"),
        ({"config": {"QRMI_IBM_QCS_ENDPOINT": 5}}, "spec.config.QRMI_IBM_QCS_ENDPOINT"),
    ],
)
def test_schema_tier_rejects_naming_the_field(change: dict[str, Any], field: str) -> None:
    obj = cr("ibm-torino", {**IBM, **change})
    errors = schema_errors(SCHEMA, obj)
    assert [p for p, _ in errors] == [field], errors


@pytest.mark.parametrize(
    ("name", "change", "field", "words"),
    [
        ("x", {"access": "node-bound"}, "spec.nodeSelector", "node-bound"),
        (
            "x",
            {
                "type": "pasqal-cloud",
                "resourceId": "fresnel-1",
                "config": {"QRMI_PASQAL_CLOUD_PROJECT_ID": "p"},
            },
            "spec.resourceId",
            "device type",
        ),
        ("x", {"config": {"QRMI_IBM_QCS_ENDPOINT": "u"}}, "spec.config", "needs"),
        ("x", {"config": {**IBM["config"], "QRMI_FOO": "1"}}, "spec.config", "unknown key"),
        (
            "x",
            {"config": {**IBM["config"], "QRMI_IBM_QCS_IAM_APIKEY": "k"}},
            "spec.config",
            "Secret",
        ),
        ("x", {"config": {**IBM["config"], "lower_case": "1"}}, "spec.config", "upper-case"),
        ("x", {"credentialsSecretRef": None}, "spec.credentialsSecretRef", "Secret"),
        ("x", {"nodeSelector": {"a/b/c": "v"}}, "spec.nodeSelector", "label keys"),
        ("Bad_Name", {}, "", "DNS label"),
        ("a" * 56, {}, "", "at most 55"),
    ],
)
def test_cel_tier_rejects_what_the_model_rejects(
    name: str, change: dict[str, Any], field: str, words: str
) -> None:
    spec = {k: v for k, v in {**IBM, **change}.items() if v is not None}
    obj = cr(name, spec)
    assert schema_errors(SCHEMA, obj) == []
    errors = cel_errors(SCHEMA, obj)
    assert any(p == field and words in msg for p, msg in errors), errors
    assert _model_problems(obj), "the model must reject it too"


def test_oqtopus_open_prefix_is_mirrored() -> None:
    ok = cr("oq", {"resourceId": "oq1", "type": "oqtopus", "config": {"QRMI_OQTOPUS_URL": "u"}})
    bad = cr("oq", {"resourceId": "oq1", "type": "oqtopus", "config": {"QRMI_OTHER": "u"}})
    assert cel_errors(SCHEMA, ok) == []
    assert _model_problems(ok) == []
    assert cel_errors(SCHEMA, bad)
    assert _model_problems(bad)


_KEYS = sorted(
    {k for t in PROFILES.values() for k in t.known_config}
    | {"QRMI_FOO", "lower", "QRMI_IBM_QCS_IAM_APIKEY", "PASQAL_USERNAME", "QRMI_OQTOPUS_X"}
)


@st.composite
def _objects(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": draw(st.sampled_from([t.value for t in PROFILES])),
        "resourceId": draw(st.sampled_from(["ibm_torino", "FRESNEL", "EMU_MPS", "bad id", "x"])),
        "config": draw(
            st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(["http://x", ""]), max_size=7)
        ),
    }
    if draw(st.booleans()):
        spec["access"] = draw(st.sampled_from(["shared", "node-bound"]))
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(
            st.dictionaries(
                st.sampled_from(["zone", "kubernetes.io/hostname", "Bad Key", "x/y/z"]),
                st.sampled_from(["v1", "", "bad value!"]),
                max_size=2,
            )
        )
    ref = draw(st.sampled_from([None, "creds", "Bad_Name"]))
    if ref:
        spec["credentialsSecretRef"] = {"name": ref}
    if draw(st.booleans()):
        spec["lanes"] = draw(st.integers(0, 70))
    name = draw(st.sampled_from(["ok-name", "Bad_Name", "a" * 55, "a" * 56, "-x"]))
    return cr(name, spec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_objects())
def test_model_and_crd_agree(obj: dict[str, Any]) -> None:
    """One source of truth: what the apiserver would accept is what the model accepts."""
    crd_ok = not schema_errors(SCHEMA, obj) and not cel_errors(SCHEMA, obj)
    model_ok = not _model_problems(obj)
    assert crd_ok == model_ok, (obj, schema_errors(SCHEMA, obj), cel_errors(SCHEMA, obj))
