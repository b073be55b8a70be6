"""The kubelet restarts (``hack/local-cluster/restart.sh kubelet``): it deletes the node's
ResourceSlices and the device-plugin sockets. The DRA driver publishes the slices again
and re-registers, the device plugin re-registers, and a running pod keeps its QPU."""

from __future__ import annotations

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

from .conftest import ALL_LANES, TORINO

pytestmark = pytest.mark.cluster
TORINO_LANES = {f"{TORINO}-lane-0", f"{TORINO}-lane-1"}
HERON = 'device.attributes["qpu.quantum.example.com"].resourceId == "fake_torino"'


def test_kubelet_restart_slices_come_back_and_both_agents_reregister(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    local_cluster.apply(
        [
            rel.claim("before", HERON),
            rel.pod("before", claims={"qpu": {"resourceClaimName": "before"}}),
        ],
        "-n",
        ns,
    )
    rel.wait_pod(local_cluster, ns, "before")
    token = rel.printed_env(local_cluster, ns, "before")["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"]
    container = rel.pod_phase(local_cluster, ns, "before")["containerStatuses"][0]["containerID"]
    old = {s["metadata"]["uid"] for s in release.slices(node=NODE)}
    assert old
    dra_metrics = release.metrics("dra", 9402)
    assert "qpu_k8s_dra_registered 1.0" in dra_metrics
    registrations = release.logs("dra").count('"msg": "registered with the kubelet"')
    dp_registrations = release.logs("device-plugin").count('"msg": "registered with the kubelet"')

    local_cluster.restart("kubelet")

    def republished() -> bool:
        slices = release.slices(node=NODE)
        uids = {s["metadata"]["uid"] for s in slices}
        names = {d["name"] for s in slices for d in s["spec"]["devices"]}
        return bool(uids) and not uids & old and names == TORINO_LANES

    wait_until(republished, 90, "the node's slices deleted by the kubelet and published again")
    wait_until(
        lambda: release.allocatable() == len(ALL_LANES),
        120,
        "the device plugin to re-register and advertise every lane",
        every=1.0,
    )
    wait_until(
        lambda: release.logs("dra").count('"msg": "registered with the kubelet"') > registrations,
        60,
        "the new kubelet to accept the DRA driver's registration",
    )
    assert (
        release.logs("device-plugin").count('"msg": "registered with the kubelet"')
        > dp_registrations
    )
    # The running pod kept its container and its session.
    status = rel.pod_phase(local_cluster, ns, "before")
    assert status["phase"] == "Running"
    assert status["containerStatuses"][0]["containerID"] == container
    assert emulator.session(token)["state"] != "closed"  # type: ignore[index]
    # The new kubelet prepares a new claim through the re-registered driver.
    local_cluster.apply(
        [
            rel.claim("after", HERON),
            rel.pod("after", claims={"qpu": {"resourceClaimName": "after"}}),
        ],
        "-n",
        ns,
    )
    rel.wait_pod(local_cluster, ns, "after", timeout=180)
    assert rel.printed_env(local_cluster, ns, "after")["QRMI_JOB_QPU_RESOURCES"] == "fake_torino"
    # ...and unprepares the old one when its pod goes.
    local_cluster.kubectl("-n", ns, "delete", "pod", "before", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
        60,
        "the pre-restart claim released",
    )
    assert emulator.release_calls(token) == 1
