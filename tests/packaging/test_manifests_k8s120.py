"""The manifests that Kubernetes 1.20 understands, applied to the real 1.20 apiserver of
shared/k8s-local with its own kubectl 1.20 (client-side validation against the server's
OpenAPI, then the apiserver's validation and admission).

The QuantumBackend CRD (the operator's 1.20 rendering, without CEL rules) is applied for
real, so the QuantumBackend examples are validated by the apiserver against its structural
schema. Everything else is applied with ``--dry-run=server``: validated and admitted, never
persisted, so no pod starts and the shared cluster is left as it was. resource.k8s.io/v1
objects go through the CRDs with the real v1 schemas that the DRA tests use. Left out, as
1.20 does not know them: ValidatingAdmissionPolicy (1.30), ServiceMonitor (no CRD), pod
``resourceClaims`` (1.26) and the DaemonSet ``maxSurge`` field (1.21; the DRA DaemonSet is
checked with ``maxUnavailable: 1`` instead, DRA itself needs 1.34).
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from testsupport import k8s_cluster, packaging, resource_api

pytestmark = pytest.mark.k8s

CRD_120 = packaging.MANIFESTS / "crd" / "quantumbackends-k8s-1.20.yaml"
BUILTIN_120 = {"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"}


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(k8s_cluster.kubectl_120()), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def apply(kubeconfig: Path, objs: list[dict[str, Any]], *, dry_run: bool = True) -> str:
    """Apply ``objs``; returns kubectl's output, raising with its errors on failure."""
    args = ["apply", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    proc = kubectl(kubeconfig, *args, stdin=yaml.safe_dump_all(objs))
    if proc.returncode != 0:
        raise AssertionError(f"kubectl 1.20 apply failed:\n{proc.stderr}\n{proc.stdout}")
    return proc.stdout


def _without_empty_defaults(node: Any) -> Any:
    """A CRD schema without ``default: ""`` (1.20 reads an empty-string default as null)."""
    if isinstance(node, dict):
        return {
            k: _without_empty_defaults(v)
            for k, v in node.items()
            if not (k == "default" and v == "")
        }
    if isinstance(node, list):
        return [_without_empty_defaults(v) for v in node]
    return node


@dataclass
class Cluster:
    kubeconfig: Path
    namespace: str
    crd_error: str  # why the CRD file as it is was refused ("" when it was accepted)


@pytest.fixture(scope="module")
def cluster(k8s_kubeconfig: Path) -> Iterator[Cluster]:
    """A fresh namespace, the QuantumBackend CRD and the resource.k8s.io CRDs.

    If the apiserver refuses the CRD file as it is, that is recorded (and fails its own
    test); the other checks go on with the smallest fix applied, so one problem does not
    hide the others.
    """
    ns = f"qpu-pkg-{uuid.uuid4().hex[:8]}"
    created = kubectl(k8s_kubeconfig, "create", "namespace", ns)
    assert created.returncode == 0, created.stderr
    crd = packaging.objects(CRD_120.read_text())
    crd_error = ""
    try:
        apply(k8s_kubeconfig, crd, dry_run=False)
    except AssertionError as err:
        crd_error = str(err)
        apply(k8s_kubeconfig, _without_empty_defaults(crd), dry_run=False)
    established = kubectl(
        k8s_kubeconfig,
        "wait",
        "--for=condition=Established",
        "crd/quantumbackends.quantum.example.com",
        "--timeout=60s",
    )
    assert established.returncode == 0, established.stderr
    api = config.new_client_from_config(config_file=str(k8s_kubeconfig))
    try:
        resource_api.install(api)
        yield Cluster(k8s_kubeconfig, ns, crd_error)
    finally:
        api.close()
        kubectl(k8s_kubeconfig, "delete", "namespace", ns, "--wait=false")


def test_quantumbackend_crd_for_120_is_accepted(cluster: Cluster) -> None:
    assert not cluster.crd_error, f"{CRD_120.relative_to(packaging.REPO)}: {cluster.crd_error}"


def _for_120(obj: dict[str, Any], namespace: str) -> dict[str, Any] | None:
    """``obj`` as 1.20 can take it, or None when 1.20 has no such API."""
    if obj["apiVersion"] not in BUILTIN_120 | {resource_api.GROUP + "/v1"}:
        return None
    out = copy.deepcopy(obj)
    if out["kind"] == "Namespace":
        return None
    rolling = out.get("spec", {}).get("updateStrategy", {}).get("rollingUpdate", {})
    if out["kind"] == "DaemonSet" and rolling.pop("maxSurge", 0):
        # Surge (1.21+) lets maxUnavailable be 0; without it 1.20 needs at least 1. Only the
        # DRA DaemonSet surges, and DRA itself needs 1.34: this checks the rest of it.
        rolling["maxUnavailable"] = 1
    if "namespace" in out["metadata"] or out["kind"] in {
        "Pod",
        "Job",
        "ConfigMap",
        "ResourceClaimTemplate",
    }:
        out["metadata"]["namespace"] = namespace
    pod = (
        out["spec"]["template"]["spec"]
        if out["kind"] in {"Job", "Deployment", "DaemonSet"}
        else None
    )
    if out["kind"] == "Pod":
        pod = out["spec"]
    if pod is not None and "resourceClaims" in pod:
        return None  # 1.26+
    return out


@pytest.mark.parametrize("name", ["defaults", "device-plugin-only", "emulator"])
def test_chart_objects_are_accepted_by_120(name: str, cluster: Cluster, helm_bin: Path) -> None:
    kubeconfig, ns = cluster.kubeconfig, cluster.namespace
    objs = packaging.objects(
        packaging.render(packaging.value_set(name).values, namespace=ns, include_crds=False)
    )
    ready = [o for o in (_for_120(o, ns) for o in objs) if o is not None]
    kinds = {o["kind"] for o in ready}
    assert {"Deployment", "DaemonSet", "ClusterRole", "Role", "ServiceAccount", "Service"} <= kinds
    out = apply(kubeconfig, ready)
    assert out.count("(server dry run)") == len(ready), out


def test_quantumbackend_examples_pass_the_real_schema(cluster: Cluster) -> None:
    kubeconfig = cluster.kubeconfig
    files = sorted((packaging.MANIFESTS / "examples" / "backends").glob("*.yaml"))
    assert files
    for path in files:
        out = apply(kubeconfig, packaging.objects(path.read_text()))
        assert "quantumbackend.quantum.example.com" in out, path


def test_the_real_schema_rejects_a_bad_quantumbackend(cluster: Cluster) -> None:
    kubeconfig = cluster.kubeconfig
    (good, *_) = packaging.objects(
        (packaging.MANIFESTS / "examples/backends/emulator.yaml").read_text()
    )
    bad = copy.deepcopy(good)
    bad["spec"]["lanes"] = "two"
    proc = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(bad))
    assert proc.returncode != 0
    assert "lanes" in proc.stderr


def test_example_workloads_are_accepted_by_120(cluster: Cluster) -> None:
    kubeconfig, ns = cluster.kubeconfig, cluster.namespace
    objs = []
    for folder in ("pods", "jobs", "dra"):
        for path in sorted((packaging.MANIFESTS / "examples" / folder).glob("*.yaml")):
            objs += [o for o in (_for_120(o, ns) for o in packaging.objects(path.read_text())) if o]
    kinds = {o["kind"] for o in objs}
    assert {"Pod", "ConfigMap", "ResourceClaimTemplate"} <= kinds
    out = apply(kubeconfig, objs)
    assert out.count("(server dry run)") == len(objs), out


def test_deviceclass_is_accepted_by_the_v1_schema(cluster: Cluster, helm_bin: Path) -> None:
    kubeconfig = cluster.kubeconfig
    (dc,) = [
        o
        for o in packaging.objects(packaging.render({}, include_crds=False))
        if o["kind"] == "DeviceClass"
    ]
    out = apply(kubeconfig, [dc])
    assert "deviceclass.resource.k8s.io/qpu.quantum.example.com" in out
