"""Every rendered object and every file in manifests/ against the real Kubernetes schemas.

Built-in kinds go through PyPI ``kubernetes-validate`` (strict: unknown fields fail) for the
oldest and newest supported versions; QuantumBackends go through our CRD's
``openAPIV3Schema`` (as kubectl's strict field validation would) and through the pydantic
model the operator uses; Kueue's objects (manifests/examples/kueue) through Kueue's own CRDs,
read from its module in the Go module cache (skipped, saying so, where build.sh has not run).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from qpu_k8s.core.model import InvalidBackendError, QuantumBackend
from qpu_k8s.core.names import API_GROUP, API_VERSION, KIND
from testsupport import kueue, packaging

# Oldest release with resource.k8s.io/v1 (our DRA floor) and the newest schemas shipped.
SCHEMA_VERSIONS = ("1.34.0", "1.37.0")
# Kinds an example needs a newer Kubernetes for (checked from that version on only).
SINCE = {("resource.k8s.io/v1", "DeviceTaintRule"): (1, 37)}
QB_API_VERSION = f"{API_GROUP}/{API_VERSION}"


def manifest_files() -> list[Path]:
    return sorted(
        p
        for p in packaging.MANIFESTS.rglob("*")
        if p.suffix in {".yaml", ".yml", ".json"} and p.is_file()
    )


def crd_openapi_to_jsonschema(node: Any) -> Any:
    """A CRD structural schema as JSON Schema: nullable, int-or-string, and unknown fields
    rejected unless the schema preserves them (kubectl's strict field validation)."""
    if isinstance(node, list):
        return [crd_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: crd_openapi_to_jsonschema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def quantumbackend_schema() -> dict[str, Any]:
    crd = yaml.safe_load(packaging.CRD_SOURCE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == API_VERSION]
    schema = crd_openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
    # The apiserver owns metadata; objects carry only the usual ObjectMeta fields.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"const": QB_API_VERSION}
    schema["properties"]["kind"] = {"const": KIND}
    schema.pop("additionalProperties", None)
    schema["additionalProperties"] = False
    return schema  # type: ignore[no-any-return]


@cache
def kueue_schema(kind: str, version: str) -> dict[str, Any]:
    path = kueue.crd_file(kind)
    if not path.exists():
        pytest.skip(f"Kueue's CRD {path} is not here: hack/local-cluster/build.sh downloads it")
    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = crd_openapi_to_jsonschema(served["schema"]["openAPIV3Schema"])
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return schema  # type: ignore[no-any-return]


def validate_quantumbackend(obj: dict[str, Any]) -> list[str]:
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in jsonschema.Draft7Validator(quantumbackend_schema()).iter_errors(obj)
    ]
    try:
        QuantumBackend.from_object(obj)
    except InvalidBackendError as err:
        errors.append(str(err))
    return errors


def validate(obj: dict[str, Any], version: str) -> list[str]:
    """Problems of one object against the real schemas of ``version`` (empty when valid)."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") == QB_API_VERSION and obj.get("kind") == KIND:
        return [f"{where}: {e}" for e in validate_quantumbackend(obj)]
    if str(obj.get("apiVersion")).startswith(f"{kueue.GROUP}/"):
        schema = kueue_schema(obj["kind"], obj["apiVersion"].split("/", 1)[1])
        return [
            f"{where}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: Kubernetes {version} has no schema for {obj.get('apiVersion')}"]
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(p) for p in err.path)
        return [f"{where}: {path}: {err.message}"]
    return []


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("name", [vs.name for vs in packaging.VALUE_SETS])
def test_rendered_chart_is_valid(
    name: str, version: str, renders: dict[str, list[dict[str, Any]]]
) -> None:
    problems: list[str] = []
    checked = 0
    for obj in renders[name]:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a built-in kind; test_chart checks it against our Services
        problems += validate(obj, version)
        checked += 1
    assert checked >= 10
    assert not problems, "\n".join(problems)


def test_every_manifest_dir_file_is_listed() -> None:
    # The parametrisation below is taken at collection; make sure it saw the files.
    assert (packaging.INSTALL_DIR / "qpu-k8s.yaml") in manifest_files()


@pytest.mark.parametrize(
    "path",
    manifest_files(),
    ids=[str(p.relative_to(packaging.MANIFESTS)) for p in manifest_files()],
)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_manifest_file_is_valid(path: Path, version: str) -> None:
    docs = packaging.objects(path.read_text())
    assert docs, f"{path} holds no object"
    problems = []
    for obj in docs:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in obj:
                problems.append(f"a document without {key}")
        since = SINCE.get((obj.get("apiVersion"), obj.get("kind")))
        if since and tuple(int(x) for x in version.split(".")[:2]) < since:
            continue  # the example's README says which release it needs
        problems += validate(obj, version)
    assert not problems, f"{path.relative_to(packaging.REPO)}:\n" + "\n".join(problems)


# --- the validators can fail -----------------------------------------------------------------

GOOD_BACKEND: dict[str, Any] = {
    "apiVersion": QB_API_VERSION,
    "kind": KIND,
    "metadata": {"name": "ibm-torino"},
    "spec": {
        "resourceId": "ibm_torino",
        "type": "ibm-quantum-compute-service",
        "config": {
            "QRMI_IBM_QCS_ENDPOINT": "https://quantum.cloud.ibm.com/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": "https://iam.cloud.ibm.com",
            "QRMI_IBM_QCS_SERVICE_CRN": "crn:v1:bluemix:public:quantum-computing:us-east:a/x::",
        },
        "credentialsSecretRef": {"name": "ibm-quantum"},
    },
}


def test_quantumbackend_schema_accepts_a_good_one_and_names_the_bad_field() -> None:
    assert validate(copy.deepcopy(GOOD_BACKEND), "1.34.0") == []
    bad = copy.deepcopy(GOOD_BACKEND)
    bad["spec"]["lanes"] = "two"
    bad["spec"]["colour"] = "blue"
    problems = "\n".join(validate(bad, "1.34.0"))
    assert "spec/lanes" in problems
    assert "colour" in problems


def test_builtin_schema_rejects_unknown_fields_and_wrong_types() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": "one",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "sekurityContext": {}}]},
            },
        },
    }
    assert validate(deployment, "1.34.0")
    deployment["spec"]["replicas"] = 1
    assert validate(deployment, "1.34.0"), "an unknown field must fail in strict mode"
    del deployment["spec"]["template"]["spec"]["containers"][0]["sekurityContext"]
    assert validate(deployment, "1.34.0") == []


def test_unknown_kind_is_reported_not_skipped() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in validate(obj, "1.37.0")[0]
