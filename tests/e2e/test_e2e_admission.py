"""Admission for real, on the 1.37 apiserver: the QuantumBackend CRD's structural schema and
CEL rules (which 1.20 dropped) reject bad objects with messages that name the field; the
chart's ValidatingAdmissionPolicy rejects bad QPUClaimParameters; a ResourceQuota on the
DeviceClass's devices caps what a namespace may claim."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

GOOD: dict[str, Any] = {
    "resourceId": "fake_manila",
    "type": "ibm-quantum-compute-service",
    "config": {
        "QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:9/api/v1",
        "QRMI_IBM_QCS_IAM_ENDPOINT": "http://127.0.0.1:9",
        "QRMI_IBM_QCS_SERVICE_CRN": "crn:x",
    },
    "credentialsSecretRef": {"name": "c"},
}


def backend(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{rel.GROUP}/{rel.VERSION}",
        "kind": "QuantumBackend",
        "metadata": {"name": name},
        "spec": spec,
    }


def rejected(lc: LocalCluster, obj: dict[str, Any], namespace: str | None = None) -> str:
    """The apiserver's error for ``obj`` (server-side dry run); fails if it is accepted."""
    ns = ["-n", namespace] if namespace else []
    proc = lc.kubectl(
        *ns, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(obj), check=False
    )
    assert proc.returncode != 0, f"accepted: {json.dumps(obj)[:300]}"
    return proc.stderr


# field named in the error -> (the spec that breaks it, a piece of the message)
SCHEMA_CASES = {
    "spec.lanes": ({**GOOD, "lanes": 0}, "should be greater than or equal to 1"),
    "spec.type": ({**GOOD, "type": "d-wave"}, "Unsupported value"),
    "spec.resourceId": ({**GOOD, "resourceId": "has space"}, "should match"),
    "spec.credentialsSecretRef.name": (
        {**GOOD, "credentialsSecretRef": {"name": "Bad_Name"}},
        "should match",
    ),
    "spec.probeIntervalSeconds": ({**GOOD, "probeIntervalSeconds": 1}, "greater than or equal"),
}
CEL_CASES = {
    # A node-bound QPU must say which nodes reach it.
    "spec.nodeSelector": (
        {**GOOD, "access": "node-bound"},
        "a node-bound backend needs a nodeSelector",
    ),
    # A credential never goes into the (non-secret) config.
    "spec.config": (
        {**GOOD, "config": {**GOOD["config"], "QRMI_IBM_QCS_IAM_APIKEY": "x"}},
        "credential",
    ),
    # The type needs its vendor's credentials.
    "spec.credentialsSecretRef": (
        {k: v for k, v in GOOD.items() if k != "credentialsSecretRef"},
        "this type needs vendor credentials",
    ),
}


@pytest.mark.parametrize("field", [*SCHEMA_CASES, *CEL_CASES])
def test_crd_rejects_a_bad_quantumbackend_naming_the_field(
    local_cluster: LocalCluster, release: rel.Release, field: str
) -> None:
    spec, message = {**SCHEMA_CASES, **CEL_CASES}[field]
    err = rejected(local_cluster, backend("crd-invalid", spec))
    assert field in err, err
    assert message in err, err


def test_crd_applies_defaults_and_accepts_a_good_object(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    name = "crd-defaults"
    try:
        local_cluster.apply([backend(name, GOOD)])
        spec = local_cluster.kubectl_json("get", "quantumbackend", name)["spec"]
        assert (spec["access"], spec["lanes"], spec["probeIntervalSeconds"]) == ("shared", 1, 60)
    finally:
        local_cluster.kubectl(
            "delete", "quantumbackend", name, "--ignore-not-found", "--timeout=60s"
        )


def claim_with(parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "params"},
        "spec": {
            "devices": {
                "requests": [{"name": "qpu", "exactly": {"deviceClassName": rel.DRIVER}}],
                "config": [
                    {
                        "requests": ["qpu"],
                        "opaque": {"driver": rel.DRIVER, "parameters": parameters},
                    }
                ],
            }
        },
    }


GOOD_PARAMS = {
    "apiVersion": "qpu.quantum.example.com/v1alpha1",
    "kind": "QPUClaimParameters",
    "sessionMode": "batch",
    "sessionMaxTtlSeconds": 3600,
    "credentialsSecretRef": {"name": "alice-ibm"},
}
VAP_CASES = {
    "sessionMode": ({**GOOD_PARAMS, "sessionMode": "exclusive"}, "use dedicated or batch"),
    "sessionMaxTtlSeconds": (
        {**GOOD_PARAMS, "sessionMaxTtlSeconds": 5},
        "integer number of seconds from 60 to 86400",
    ),
    "unknown": ({**GOOD_PARAMS, "priority": "high"}, "unknown field(s) priority"),
    "credentialsSecretRef": (
        {**GOOD_PARAMS, "credentialsSecretRef": {"name": "x", "namespace": "other"}},
        "a Secret in another namespace cannot be referenced",
    ),
    "kind": ({**GOOD_PARAMS, "kind": "Other"}, "set kind: QPUClaimParameters"),
}


def test_admission_policy_rejects_bad_claim_parameters(
    local_cluster: LocalCluster, release: rel.Release, ns: str
) -> None:
    # The policy is enforced from the moment the apiserver has loaded it (the chart
    # installed it at the start of the session): a bad claim is refused...
    for what, (params, message) in VAP_CASES.items():
        err = rejected(local_cluster, claim_with(params), ns)
        assert "qpu-claim-parameters.quantum.example.com" in err, (what, err)
        assert message in err, (what, err)
    # ...and the README's example (good parameters) is accepted, template form too.
    local_cluster.kubectl(
        "-n", ns, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(claim_with(GOOD_PARAMS))
    )
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "params"},
        "spec": {"spec": copy.deepcopy(claim_with({**GOOD_PARAMS, "sessionMode": "x"})["spec"])},
    }
    err = rejected(local_cluster, template, ns)
    assert "use dedicated or batch" in err


def test_resource_quota_on_the_deviceclass_caps_a_namespace(
    local_cluster: LocalCluster, release: rel.Release, ns: str
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "qpus"},
        "spec": {"hard": {f"{rel.DRIVER}.deviceclass.resource.k8s.io/devices": "1"}},
    }
    local_cluster.apply([quota], "-n", ns)
    wait_until(
        lambda: (
            local_cluster.kubectl_json("-n", ns, "get", "resourcequota", "qpus")
            .get("status", {})
            .get("hard")
        ),
        60,
        "the quota controller to fill in the quota's status",
    )
    one = claim_with(GOOD_PARAMS)
    del one["spec"]["devices"]["config"]
    local_cluster.apply([one], "-n", ns)
    second = copy.deepcopy(one)
    second["metadata"]["name"] = "one-too-many"
    proc = local_cluster.kubectl(
        "-n", ns, "create", "-f", "-", stdin=json.dumps(second), check=False
    )
    assert proc.returncode != 0
    assert "exceeded quota: qpus" in proc.stderr, proc.stderr
    assert f"{rel.DRIVER}.deviceclass.resource.k8s.io/devices" in proc.stderr
    used = local_cluster.kubectl_json("-n", ns, "get", "resourcequota", "qpus")["status"]["used"]
    assert used == {f"{rel.DRIVER}.deviceclass.resource.k8s.io/devices": "1"}
