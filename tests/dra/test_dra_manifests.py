"""The DRA manifests: real 1.34 schemas, and the admission policy's CEL on real cases.

cel-python evaluates the policy's expressions here. Differences from the apiserver: it
type-checks nothing ahead (Kubernetes compiles the policy against the claim's OpenAPI
schema and reports type warnings in the policy's status), and Kubernetes' extension
libraries are missing: ``join`` (strings) is supplied below; nothing else is used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel

from qpu_k8s.dra.params import InvalidParametersError, parse_parameters
from testsupport.dra import validate
from testsupport.names import DRIVER

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = [
    REPO / "manifests" / "deviceclass.yaml",
    REPO / "manifests" / "validatingadmissionpolicy-claim-parameters.yaml",
    *sorted((REPO / "manifests" / "examples" / "dra").glob("*.yaml")),
]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_kubernetes_1_34(path: Path) -> None:
    for doc in _docs(path):
        # DeviceTaintRule is resource.k8s.io/v1 (GA) from 1.37 on.
        validate(doc, "1.37.0" if doc["kind"] == "DeviceTaintRule" else "1.34.0")


def test_every_example_folder_file_is_documented() -> None:
    readme = (REPO / "manifests" / "examples" / "dra" / "README.md").read_text()
    for path in (REPO / "manifests" / "examples" / "dra").glob("*.yaml"):
        assert path.name in readme


def test_deviceclass_names_the_extended_resource() -> None:
    (doc,) = _docs(REPO / "manifests" / "deviceclass.yaml")
    assert doc["metadata"]["name"] == DRIVER
    assert doc["spec"]["extendedResourceName"] == "quantum.example.com/qpu"


# -- the ValidatingAdmissionPolicy ---------------------------------------------------------
(POLICY, BINDING) = _docs(REPO / "manifests" / "validatingadmissionpolicy-claim-parameters.yaml")
ENV = celpy.Environment()


def _join(items: Any, sep: Any = "") -> celpy.celtypes.StringType:
    return celpy.celtypes.StringType(str(sep).join(str(i) for i in items))


def _eval(expression: str, activation: dict[str, Any]) -> Any:
    program = ENV.program(ENV.compile(expression), functions={"join": _join})
    return program.evaluate(activation)


def admit(obj: dict[str, Any], resource: str = "resourceclaims") -> list[str]:
    """The messages of the policy's failed validations for ``obj`` (empty: admitted)."""
    activation: dict[str, Any] = {
        "object": json_to_cel(obj),
        "request": json_to_cel({"resource": {"resource": resource}}),
    }
    variables: dict[str, Any] = {}
    activation["variables"] = json_to_cel({})
    for var in POLICY["spec"]["variables"]:
        variables[var["name"]] = _eval(var["expression"], activation)
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()}
        )
    failed = []
    for v in POLICY["spec"]["validations"]:
        ok = _eval(v["expression"], activation)
        assert isinstance(ok, celpy.celtypes.BoolType), f"{v['expression']} gave {ok!r}"
        if not ok:
            failed.append(
                str(_eval(v["messageExpression"], activation))
                if "messageExpression" in v
                else v["message"]
            )
    return failed


def _claim_with(params: Any, driver: str = DRIVER) -> dict[str, Any]:
    (doc,) = [
        d
        for d in _docs(REPO / "manifests" / "examples" / "dra" / "claim-parameters.yaml")
        if d["kind"] == "ResourceClaim"
    ]
    doc = copy.deepcopy(doc)
    doc["spec"]["devices"]["config"][0]["opaque"] = {"driver": driver, "parameters": params}
    return doc


GOOD = {
    "apiVersion": "qpu.quantum.example.com/v1alpha1",
    "kind": "QPUClaimParameters",
    "sessionMode": "batch",
    "sessionMaxTtlSeconds": 3600,
    "credentialsSecretRef": {"name": "alice-ibm"},
}


def test_policy_binding_points_at_the_policy() -> None:
    assert BINDING["spec"]["policyName"] == POLICY["metadata"]["name"]
    assert BINDING["spec"]["validationActions"] == ["Deny"]


def test_good_parameters_and_unrelated_claims_are_admitted() -> None:
    example = _claim_with(GOOD)
    assert admit(example) == []
    assert admit(_claim_with({"whatever": 1}, driver="gpu.example.com")) == []
    plain = copy.deepcopy(example)
    del plain["spec"]["devices"]["config"]
    assert admit(plain) == []
    template = {"spec": {"spec": copy.deepcopy(example["spec"])}}
    assert admit(template, "resourceclaimtemplates") == []
    parse_parameters(GOOD, "x")  # the driver agrees


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"apiVersion": "qpu.quantum.example.com/v2"}, "apiVersion: set apiVersion"),
        ({"kind": "Other"}, "kind: set kind: QPUClaimParameters"),
        ({"sesionMode": "batch"}, "unknown field(s) sesionMode; allowed fields"),
        ({"sessionMode": "exclusive"}, "sessionMode: use dedicated or batch"),
        ({"sessionMaxTtlSeconds": "3600"}, "sessionMaxTtlSeconds: use an integer"),
        ({"sessionMaxTtlSeconds": 30}, "sessionMaxTtlSeconds: use an integer"),
        ({"credentialsSecretRef": {"name": "a", "namespace": "b"}}, "credentialsSecretRef: use"),
        ({"credentialsSecretRef": {"name": "Not_A_Name"}}, "credentialsSecretRef: use"),
        ({"credentialsSecretRef": "alice"}, "credentialsSecretRef: use"),
    ],
)
def test_bad_parameters_are_denied_by_policy_and_driver(
    change: dict[str, Any], message: str
) -> None:
    params = {**GOOD, **change}
    failed = admit(_claim_with(params))
    assert len(failed) == 1
    assert message in failed[0]
    template = {"spec": {"spec": _claim_with(params)["spec"]}}
    assert len(admit(template, "resourceclaimtemplates")) == 1
    with pytest.raises(InvalidParametersError):
        parse_parameters(params, "x")


def test_missing_apiversion_and_kind() -> None:
    failed = admit(_claim_with({"sessionMode": "batch"}))
    assert len(failed) == 2
