"""Every manifest the project ships, accepted by the real 1.37 apiserver: the plain install
files, the CRD, DeviceClass and admission policy, the examples, and the chart rendered with
each of the value sets the packaging tests use. Server-side dry runs (``kubectl apply
--dry-run=server``: schema, field validation, CEL rules, admission, nothing persisted), with
the kubectl built with the cluster. The chart's default + emulator values are installed for
real by the session (test_e2e_install)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport import packaging
from testsupport import release as rel
from testsupport.cluster import LocalCluster

pytestmark = pytest.mark.cluster
M = packaging.MANIFESTS
FILES = sorted(
    [
        *M.glob("install/*.yaml"),
        M / "crd" / "quantumbackends.yaml",
        M / "deviceclass.yaml",
        M / "validatingadmissionpolicy-claim-parameters.yaml",
        # Kueue's kinds are served only while test_e2e_kueue runs Kueue; it applies them.
        *(p for p in M.glob("examples/*/*.yaml") if p.parent.name != "kueue"),
    ]
)
# Served only where the Prometheus Operator is installed.
NOT_SERVED = {"ServiceMonitor"}
# Where the "custom" value set gives the operator and the driver Secret access.
CUSTOM_NAMESPACES = ("vendors", "team-a")


@pytest.fixture(scope="module")
def dry_ns(local_cluster: LocalCluster, release: rel.Release) -> Iterator[str]:
    """One namespace for the whole module (dry runs persist nothing in it), plus the
    namespaces the "custom" value set names for its Roles."""
    name = f"e2e-manifests-{uuid.uuid4().hex[:4]}"
    made = [name]
    local_cluster.kubectl("create", "namespace", name)
    for extra in CUSTOM_NAMESPACES:
        if local_cluster.kubectl("create", "namespace", extra, check=False).returncode == 0:
            made.append(extra)
    yield name
    local_cluster.kubectl("delete", "namespace", *made, "--wait=false", check=False)


def dry_run(lc: LocalCluster, objs: list[dict[str, Any]], namespace: str) -> str:
    """Server-side dry run; objects that name no namespace go to ``namespace``."""
    explicit = any("namespace" in o.get("metadata", {}) for o in objs)
    proc = lc.kubectl(
        "apply",
        *([] if explicit else ["-n", namespace]),
        "--dry-run=server",
        "-f",
        "-",
        stdin="\n---\n".join(json.dumps(o) for o in objs),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(Path(p).relative_to(M)))
def test_shipped_manifest_is_accepted(local_cluster: LocalCluster, dry_ns: str, path: Path) -> None:
    objs = packaging.objects(path.read_text())
    assert objs
    out = dry_run(local_cluster, objs, dry_ns)
    assert out.count("(server dry run)") == len(objs), out


@pytest.mark.parametrize("name", [vs.name for vs in packaging.VALUE_SETS])
def test_chart_renders_are_accepted(local_cluster: LocalCluster, dry_ns: str, name: str) -> None:
    objs = [
        o
        for o in packaging.objects(
            packaging.render(packaging.value_set(name).values, namespace=dry_ns, include_crds=False)
        )
        if o["kind"] not in NOT_SERVED
    ]
    kinds = {o["kind"] for o in objs}
    assert {"DaemonSet", "ClusterRole", "ServiceAccount", "Service"} <= kinds
    out = dry_run(local_cluster, objs, dry_ns)
    assert out.count("(server dry run)") == len(objs), out


def test_the_real_schema_rejects_a_bad_example(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    (good, *_) = packaging.objects((M / "examples/backends/emulator.yaml").read_text())
    good["spec"]["lanes"] = "two"
    proc = local_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(good), check=False
    )
    assert proc.returncode != 0
    assert "spec.lanes" in proc.stderr
