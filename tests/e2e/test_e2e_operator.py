"""The operator as the chart runs it (a pod, in-cluster config) with the in-cluster emulator
as the vendor: what the API-tier tests used to show against 1.20 with the operator in the
test process, now with the real scheduler, claim controller and kubelet in the loop.

* vendor faults become conditions and Events (hang, offline with the vendor's reason,
  rejected key), a missing Secret is explained and recovered from, no credential in
  Events or status;
* node ConfigMap and cluster-wide slices follow the QuantumBackends; the liveness and
  metrics endpoints answer;
* a namespace label makes a shared ResourceClaim; a real pod holding it counts as a live
  acquisition; deleting the backend removes its slices first and waits for the held
  claim (its node config stays until the pod is gone and the session is released);
* a restarted operator resumes from status without re-probing what is not due.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from qpu_k8s.operator import shared_claims as sc
from qpu_k8s.operator.configmap import DATA_KEY
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster
WRONG_KEY = "wrong-apikey-e2e-77e1"
HANG, DOWN, BADKEY, BROKEN = "e2e-hang", "e2e-down", "e2e-badkey", "e2e-broken"
SHARED, PATIENT = "e2e-shared", "e2e-patient"


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


@pytest.fixture(scope="module")
def operator_backends(
    local_cluster: LocalCluster, release: rel.Release
) -> Iterator[dict[str, dict[str, Any]]]:
    """This module's QuantumBackends, created together so that the node agents' ConfigMap
    volume (refreshed by the kubelet about once a minute) catches up once for all."""
    emu = release.emulator()
    emu.set_fault("hang", "fake_nairobi")
    emu.set_online("fake_lagos", False, reason="cryostat warm-up")
    release.extra_secrets.append(WRONG_KEY)
    local_cluster.apply(
        [secret("e2e-bad-key", {"QRMI_IBM_QCS_IAM_APIKEY": WRONG_KEY})], "-n", release.namespace
    )
    docs = {
        HANG: rel.backend_doc(release, HANG, "fake_nairobi", probe_seconds=30),
        DOWN: rel.backend_doc(release, DOWN, "fake_lagos", probe_seconds=30),
        BADKEY: rel.backend_doc(release, BADKEY, "fake_manila", probe_seconds=30),
        BROKEN: rel.backend_doc(release, BROKEN, "fake_manila", probe_seconds=5),
        SHARED: rel.backend_doc(release, SHARED, "fake_manila", probe_seconds=5),
        PATIENT: rel.backend_doc(release, PATIENT, "fake_manila", probe_seconds=300),
    }
    docs[BADKEY]["spec"]["credentialsSecretRef"] = {"name": "e2e-bad-key"}
    docs[BROKEN]["spec"]["credentialsSecretRef"] = {"name": "e2e-not-created-yet"}
    local_cluster.apply(list(docs.values()))
    try:
        yield docs
    finally:
        emu.clear_faults()
        local_cluster.kubectl(
            "delete", "quantumbackend", *docs, "--ignore-not-found", "--timeout=120s", check=False
        )
        local_cluster.kubectl(
            "-n",
            release.namespace,
            "delete",
            "secret",
            "e2e-bad-key",
            "e2e-not-created-yet",
            "--ignore-not-found",
            check=False,
        )


def events_about(lc: LocalCluster, *names: str) -> list[dict[str, Any]]:
    """Events about QuantumBackends (cluster-scoped objects: their Events are in default)."""
    items = lc.kubectl_json("-n", "default", "get", "events")["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == "QuantumBackend"
        and e["involvedObject"]["name"] in names
    ]


def node_config(lc: LocalCluster, release: rel.Release) -> set[str]:
    cm = lc.kubectl_json(
        "-n", release.namespace, "get", "configmap", f"{release.fullname}-node-config"
    )
    doc = yaml.safe_load((cm.get("data") or {}).get(DATA_KEY, "")) or {}
    return {b["name"] for b in doc.get("backends") or []}


def test_vendor_faults_become_conditions_and_events(
    local_cluster: LocalCluster,
    release: rel.Release,
    operator_backends: dict[str, dict[str, Any]],
) -> None:
    def reason(name: str) -> str:
        return str(release.condition(name).get("reason", ""))

    wait_until(lambda: reason(DOWN) == "BackendOffline", 90, "BackendOffline")
    wait_until(lambda: reason(BADKEY) == "AuthenticationFailed", 90, "AuthenticationFailed")
    wait_until(lambda: reason(HANG) == "ProbeTimeout", 120, "ProbeTimeout (the probe's deadline)")
    assert "cryostat warm-up" in release.condition(DOWN)["message"]
    assert release.condition(DOWN)["status"] == "False"
    # Not Ready: no devices of theirs are published for the scheduler.
    for name in (HANG, DOWN, BADKEY):
        assert not release.slices(pool=f"shared/{name}")
    events = events_about(local_cluster, HANG, DOWN, BADKEY)
    reasons = {(e["type"], e["reason"], e["involvedObject"]["name"]) for e in events}
    assert ("Warning", "AuthenticationFailed", BADKEY) in reasons
    assert ("Warning", "BackendOffline", DOWN) in reasons
    blob = json.dumps(events) + json.dumps([release.backend(n) for n in (HANG, DOWN, BADKEY)])
    assert WRONG_KEY not in blob
    for value in release.credential_values():
        assert value not in blob


def test_missing_secret_is_explained_and_recovered_and_deletion_cleans_up(
    local_cluster: LocalCluster,
    release: rel.Release,
    operator_backends: dict[str, dict[str, Any]],
) -> None:
    acc = wait_until(
        lambda: (
            (c := release.condition(BROKEN, "Accessible")).get("reason") == "SecretNotFound" and c
        ),
        60,
        "Accessible=False with SecretNotFound",
    )
    assert "e2e-not-created-yet" in acc["message"]
    assert "QRMI_IBM_QCS_IAM_APIKEY" in acc["message"]
    apikey = next(v for v in release.credential_values() if "apikey" in v)
    local_cluster.apply(
        [secret("e2e-not-created-yet", {"QRMI_IBM_QCS_IAM_APIKEY": apikey})],
        "-n",
        release.namespace,
    )
    wait_until(lambda: release.condition(BROKEN).get("status") == "True", 60, "it recovers")
    assert release.backend(BROKEN)["status"]["qubits"] == 5  # type: ignore[index]
    # Node config and cluster-wide slices follow.
    wait_until(lambda: BROKEN in node_config(local_cluster, release), 30, "the node config")
    (s,) = wait_until(lambda: release.slices(pool=f"shared/{BROKEN}"), 30, "its shared slice")
    assert s["spec"]["allNodes"] is True
    assert [d["name"] for d in s["spec"]["devices"]] == [f"{BROKEN}-lane-0"]
    reasons = {(e["type"], e["reason"]) for e in events_about(local_cluster, BROKEN)}
    assert ("Warning", "SecretNotFound") in reasons
    assert ("Normal", "Online") in reasons
    # The operator's endpoints, from the host through its pod IP.
    (pod,) = release.pods("operator")
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/healthz", timeout=5) as resp:
        health = json.loads(resp.read())
    assert health["operator"]["backends"] >= 8
    metrics = release.metrics("operator", 9400)
    assert f'qpu_k8s_operator_backend_ready{{backend="{BROKEN}"}} 1.0' in metrics
    assert f'qpu_k8s_operator_backend_ready{{backend="{DOWN}"}} 0.0' in metrics
    # Deleted: slices, node config entry and the object go.
    local_cluster.kubectl("delete", "quantumbackend", BROKEN, "--timeout=60s")
    assert not release.slices(pool=f"shared/{BROKEN}")
    wait_until(
        lambda: BROKEN not in node_config(local_cluster, release), 30, "node config entry gone"
    )


def test_shared_claim_from_a_namespace_label_held_by_a_pod_delays_deletion(
    local_cluster: LocalCluster,
    release: rel.Release,
    operator_backends: dict[str, dict[str, Any]],
    ns: str,
    emulator: rel.AdminClient,
) -> None:
    claim = sc.claim_name(SHARED)
    local_cluster.kubectl("label", "namespace", ns, f"{sc.NS_LABEL_PREFIX}{SHARED}=true")
    wait_until(
        lambda: (
            local_cluster.kubectl("-n", ns, "get", "resourceclaim", claim, check=False).returncode
            == 0
        ),
        60,
        "the operator's shared claim in the labelled namespace",
    )
    local_cluster.apply([rel.pod("holder", claims={"qpu": {"resourceClaimName": claim}})], "-n", ns)
    # The scheduler allocates it from the operator's shared pool at once; the kubelet's
    # prepare succeeds once the DRA driver's config (a ConfigMap volume) lists the backend.
    rel.wait_pod(local_cluster, ns, "holder", timeout=240)
    created = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", claim)["metadata"]
    env = rel.printed_env(local_cluster, ns, "holder")
    token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    got = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", claim)
    assert got["status"]["allocation"]["devices"]["results"][0]["pool"] == f"shared/{SHARED}"
    wait_until(
        lambda: (release.backend(SHARED) or {}).get("status", {}).get("liveAcquisitions") == 1,
        60,
        "status.liveAcquisitions = 1 (the claim is reserved for a pod)",
    )
    assert release.backend(SHARED)["status"]["sharedClaims"] == 1  # type: ignore[index]
    # The operator keeps its claim (the stored spec, defaults included, is what it wants):
    # the same object after its sync loop ran again (on the backend's probes).
    assert "HTTP 422" not in release.logs("operator")
    got = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", claim)["metadata"]
    assert got["uid"] == created["uid"]

    # Deletion: slices first, then the operator waits for the held claim; the node config
    # keeps the backend, because the node agent needs it to release.
    local_cluster.kubectl("delete", "quantumbackend", SHARED, "--wait=false")
    wait_until(lambda: not release.slices(pool=f"shared/{SHARED}"), 30, "its slices removed first")
    wait_until(
        lambda: local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", claim)["metadata"].get(
            "deletionTimestamp"
        ),
        30,
        "the operator to delete the shared claim",
    )
    held = release.backend(SHARED)
    assert held is not None
    assert held["metadata"].get("deletionTimestamp")
    assert SHARED in node_config(local_cluster, release)
    assert emulator.session(token)["state"] != "closed"  # type: ignore[index]
    # The pod goes: the claim controller unreserves and deletes the claim, the kubelet
    # unprepares (the session is released), the operator finishes the deletion.
    local_cluster.kubectl("-n", ns, "delete", "pod", "holder", "--wait=true", "--timeout=60s")
    wait_until(lambda: release.backend(SHARED) is None, 90, "the backend gone")
    assert SHARED not in node_config(local_cluster, release)
    assert emulator.session(token)["state"] == "closed"  # type: ignore[index]
    assert emulator.release_calls(token) == 1


def test_restarted_operator_resumes_from_status_without_reprobing(
    local_cluster: LocalCluster,
    release: rel.Release,
    operator_backends: dict[str, dict[str, Any]],
) -> None:
    wait_until(lambda: release.condition(PATIENT).get("status") == "True", 60, "patient Ready")
    probed = release.backend(PATIENT)["status"]["lastProbeTime"]  # type: ignore[index]
    since = release.condition(PATIENT)["lastTransitionTime"]
    (old,) = release.pods("operator")
    local_cluster.kubectl(
        "-n", release.namespace, "delete", "pod", old["metadata"]["name"], "--timeout=60s"
    )
    local_cluster.kubectl(
        "-n",
        release.namespace,
        "rollout",
        "status",
        f"deployment/{release.fullname}-operator",
        "--timeout=120s",
    )
    (new,) = release.pods("operator")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    # The new operator is at work (a backend due every 30 s gets a fresh probe)...
    down_probed = release.backend(DOWN)["status"]["lastProbeTime"]  # type: ignore[index]
    wait_until(
        lambda: release.backend(DOWN)["status"]["lastProbeTime"] != down_probed,  # type: ignore[index]
        90,
        "the new operator to probe a backend that is due",
    )
    # ...and leaves the one due in 300 s alone: status is its memory.
    assert release.backend(PATIENT)["status"]["lastProbeTime"] == probed  # type: ignore[index]
    assert release.condition(PATIENT)["lastTransitionTime"] == since
