"""A backend that goes offline at the vendor: the DRA driver withdraws its devices from the
node's ResourceSlice (its default ``--unhealthy=withdraw``), the device plugin reports them
Unhealthy to the kubelet, the operator says why in the QuantumBackend's conditions; the
real scheduler then sends a new claim elsewhere, and a claim only that backend can serve
waits until it is back."""

from __future__ import annotations

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

from .conftest import ALL_LANES, TORINO

pytestmark = pytest.mark.cluster
TORINO_LANES = {f"{TORINO}-lane-0", f"{TORINO}-lane-1"}


def claim(name: str, expression: str) -> dict[str, object]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "qpu",
                        "exactly": {
                            "deviceClassName": rel.DRIVER,
                            "selectors": [{"cel": {"expression": expression}}],
                        },
                    }
                ]
            }
        },
    }


ATTR = 'device.attributes["qpu.quantum.example.com"]'


def test_offline_backend_is_withdrawn_and_new_claims_go_elsewhere(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    assert set(release.devices(node=NODE)) >= TORINO_LANES
    emulator.set_online("fake_torino", False, reason="cryostat warm-up")
    try:
        wait_until(
            lambda: not TORINO_LANES & set(release.devices(node=NODE)),
            60,
            "the DRA driver to withdraw the offline backend's devices",
        )
        wait_until(
            lambda: release.condition(TORINO).get("reason") == "BackendOffline",
            60,
            "the operator to report BackendOffline",
        )
        assert "cryostat warm-up" in release.condition(TORINO)["message"]
        wait_until(
            lambda: release.allocatable() == len(ALL_LANES) - 2,
            60,
            "the device plugin to report the two lanes Unhealthy",
        )
        # Any IBM QPU: the scheduler takes one that is still published.
        local_cluster.apply(
            [
                claim("any-ibm", f'{ATTR}.vendor == "ibm"'),
                claim("heron", f"{ATTR}.qubits >= 100 && !{ATTR}.simulator"),
                rel.pod("any-ibm", claims={"qpu": {"resourceClaimName": "any-ibm"}}),
                rel.pod("heron", claims={"qpu": {"resourceClaimName": "heron"}}),
            ],
            "-n",
            ns,
        )
        rel.wait_pod(local_cluster, ns, "any-ibm")
        assert rel.printed_env(local_cluster, ns, "any-ibm")["QRMI_JOB_QPU_RESOURCES"] == (
            "fake_manila"
        )
        # Only the offline backend matches: no allocation, the pod waits unschedulable.
        wait_until(
            lambda: any(
                e["reason"] == "FailedScheduling"
                for e in local_cluster.kubectl_json(
                    "-n", ns, "get", "events", "--field-selector", "involvedObject.name=heron"
                )["items"]
            ),
            60,
            "the scheduler to report the heron pod unschedulable",
        )
        assert rel.pod_phase(local_cluster, ns, "heron")["phase"] == "Pending"
        heron = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", "heron")
        assert not heron.get("status", {}).get("allocation")
    finally:
        emulator.set_online("fake_torino", True)
    # Back online: published again, and the waiting pod gets it.
    wait_until(
        lambda: set(release.devices(node=NODE)) >= TORINO_LANES,
        60,
        "the devices published again",
    )
    rel.wait_pod(local_cluster, ns, "heron", timeout=120)
    assert rel.printed_env(local_cluster, ns, "heron")["QRMI_JOB_QPU_RESOURCES"] == "fake_torino"
    wait_until(lambda: release.allocatable() == len(ALL_LANES), 60, "every lane Healthy again")
