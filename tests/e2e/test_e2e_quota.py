"""Concurrent QPU quotas per namespace, the two ResourceQuotas of ``manifests/examples/quota``
applied as shipped (limits lowered to one): what counts and when the apiserver refuses.

- Device plugin: each pod's ``quantum.example.com/qpu`` request counts while the pod is
  not finished; the pod that would pass the limit is refused at creation, naming the quota.
- DRA: each ResourceClaim counts its devices from creation to deletion; a claim shared by
  two pods costs one device; a pod whose claim comes from a template and cannot be created
  waits Pending with the quota named in its events, and starts once a device is free.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from testsupport import packaging
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

from .conftest import ALL_LANES

pytestmark = pytest.mark.cluster
QUOTAS = packaging.MANIFESTS / "examples" / "quota"
DP_KEY = "requests.quantum.example.com/qpu"
DRA_KEY = f"{rel.DRIVER}.deviceclass.resource.k8s.io/devices"


def quota(file: str, limit: int) -> dict[str, Any]:
    """The shipped quota with its one limit lowered."""
    doc: dict[str, Any] = yaml.safe_load((QUOTAS / file).read_text())
    (key,) = doc["spec"]["hard"]
    doc["spec"]["hard"][key] = str(limit)
    return doc


def apply_quota(lc: LocalCluster, ns: str, doc: dict[str, Any]) -> str:
    """Apply a quota and wait until the quota controller has counted the namespace (until
    then the apiserver cannot enforce it)."""
    lc.apply([doc], "-n", ns)
    name: str = doc["metadata"]["name"]
    wait_until(
        lambda: (
            lc.kubectl_json("-n", ns, "get", "resourcequota", name).get("status", {}).get("used")
        ),
        60,
        f"the quota controller to count {name}",
    )
    return name


def used(lc: LocalCluster, ns: str, name: str, key: str) -> str:
    status = lc.kubectl_json("-n", ns, "get", "resourcequota", name).get("status", {})
    return str(status.get("used", {}).get(key, ""))


def create(lc: LocalCluster, ns: str, doc: dict[str, Any]) -> Any:
    return lc.kubectl("-n", ns, "create", "-f", "-", stdin=json.dumps(doc), check=False)


def test_device_plugin_quota_counts_each_running_pod(
    local_cluster: LocalCluster, release: rel.Release, ns: str
) -> None:
    wait_until(lambda: release.allocatable() == len(ALL_LANES), 120, "every lane free")
    name = apply_quota(local_cluster, ns, quota("device-plugin-quota.yaml", 1))
    first = rel.pod("first", limits={rel.RESOURCE: 1})
    local_cluster.apply([first], "-n", ns)
    rel.wait_pod(local_cluster, ns, "first")
    assert used(local_cluster, ns, name, DP_KEY) == "1"

    refused = create(local_cluster, ns, rel.pod("second", limits={rel.RESOURCE: 1}))
    assert refused.returncode != 0
    assert f"exceeded quota: {name}" in refused.stderr, refused.stderr
    assert DP_KEY in refused.stderr

    local_cluster.kubectl("-n", ns, "delete", "pod", "first", "--wait=true", "--timeout=60s")
    wait_until(lambda: used(local_cluster, ns, name, DP_KEY) == "0", 60, "the lane given back")
    local_cluster.apply([rel.pod("second", limits={rel.RESOURCE: 1})], "-n", ns)
    rel.wait_pod(local_cluster, ns, "second")


def test_dra_quota_counts_claims_and_a_shared_claim_once(
    local_cluster: LocalCluster, release: rel.Release, ns: str
) -> None:
    name = apply_quota(local_cluster, ns, quota("dra-quota.yaml", 1))
    local_cluster.apply([rel.claim("shared")], "-n", ns)
    pods = [rel.pod(p, claims={"qpu": {"resourceClaimName": "shared"}}) for p in ("a", "b")]
    local_cluster.apply(pods, "-n", ns)
    for p in ("a", "b"):
        rel.wait_pod(local_cluster, ns, p)
    assert used(local_cluster, ns, name, DRA_KEY) == "1"  # two pods, one claim, one device

    refused = create(local_cluster, ns, rel.claim("another"))
    assert refused.returncode != 0
    assert f"exceeded quota: {name}" in refused.stderr, refused.stderr
    assert DRA_KEY in refused.stderr

    # A claim from a template is created by the controller, not by the user: the pod waits
    # Pending and its events name the quota; it starts once the shared claim is gone.
    template = rel.claim_template("lane")
    local_cluster.apply([template], "-n", ns)
    local_cluster.apply(
        [rel.pod("templated", claims={"qpu": {"resourceClaimTemplateName": "lane"}})], "-n", ns
    )

    def quota_event() -> str | None:
        events = local_cluster.kubectl_json(
            "-n", ns, "get", "events", "--field-selector", "involvedObject.name=templated"
        )["items"]
        text = " ".join(e.get("message", "") for e in events)
        return text if f"exceeded quota: {name}" in text else None

    message = wait_until(quota_event, 90, "an event naming the quota on the pending pod")
    assert DRA_KEY in message
    assert rel.pod_phase(local_cluster, ns, "templated").get("phase") == "Pending"

    local_cluster.kubectl("-n", ns, "delete", "pod", "a", "b", "--wait=true", "--timeout=60s")
    local_cluster.kubectl("-n", ns, "delete", "resourceclaim", "shared", "--timeout=60s")
    rel.wait_pod(local_cluster, ns, "templated", timeout=240)
    assert used(local_cluster, ns, name, DRA_KEY) == "1"
