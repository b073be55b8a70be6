"""A backend that goes offline at the vendor: the DRA driver withdraws its devices from the
node's ResourceSlice (its default ``--unhealthy=withdraw``), the device plugin reports them
Unhealthy to the kubelet, the operator says why in the QuantumBackend's conditions; the
real scheduler then sends a new claim elsewhere, and a claim only that backend can serve
waits until it is back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

from .conftest import ALL_LANES, TORINO

pytestmark = pytest.mark.cluster
TORINO_LANES = {f"{TORINO}-lane-0", f"{TORINO}-lane-1"}


ATTR = 'device.attributes["qpu.quantum.example.com"]'


def wait_unschedulable(lc: LocalCluster, ns: str, pod: str) -> None:
    """Wait for the scheduler's FailedScheduling event on ``pod`` (it found no device)."""
    wait_until(
        lambda: any(
            e["reason"] == "FailedScheduling"
            for e in lc.kubectl_json(
                "-n", ns, "get", "events", "--field-selector", f"involvedObject.name={pod}"
            )["items"]
        ),
        60,
        f"the scheduler to report pod {pod} unschedulable",
    )


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
                rel.claim("any-ibm", f'{ATTR}.vendor == "ibm"'),
                rel.claim("heron", f"{ATTR}.qubits >= 100 && !{ATTR}.simulator"),
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
        wait_unschedulable(local_cluster, ns, "heron")
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


def upgrade(lc: LocalCluster, release: rel.Release, extra_args: list[str]) -> None:
    """``helm upgrade --reuse-values`` with ``dra.extraArgs`` (JSON: an empty list resets)."""
    release.upgrade(json_values={"dra.extraArgs": extra_args})
    lc.kubectl(
        "-n", release.namespace, "rollout", "status", f"daemonset/{release.fullname}-dra",
        "--timeout=180s",
    )  # fmt: skip
    # The chart surges: old and new driver run side by side for a while, both publishing
    # the node's pool. Go on once the old one is gone.
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=dra"
    wait_until(
        lambda: (
            len(
                lc.kubectl(
                    "-n", release.namespace, "get", "pods", "-l", selector, "-o", "name"
                ).stdout.split()
            )
            == 1
        ),
        120,
        "one DRA driver pod on the node",
        every=1.0,
    )


@pytest.fixture
def taint_mode(local_cluster: LocalCluster, release: rel.Release) -> Iterator[None]:
    """The chart's DRA driver with ``--unhealthy=taint`` (``dra.extraArgs``), put back after."""
    upgrade(local_cluster, release, ["--unhealthy=taint"])
    try:
        # A driver that has just started may publish a device tainted until its first
        # probe and target() answer: start from both lanes published and untainted.
        wait_until(
            lambda: all(
                lane in release.devices(node=NODE) and not taints(release, lane)
                for lane in TORINO_LANES
            ),
            90,
            "the node pool published by the new driver, untainted",
        )
        yield
    finally:
        upgrade(local_cluster, release, [])


def taints(release: rel.Release, device: str) -> list[dict[str, Any]]:
    return list(release.devices(node=NODE).get(device, {}).get("taints") or [])


@pytest.mark.usefixtures("taint_mode")
def test_offline_backend_tainted_only_a_tolerating_claim_gets_it(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    heron = f'{ATTR}.resourceId == "fake_torino"'
    unhealthy = {"key": f"{rel.DRIVER}/unhealthy", "operator": "Exists", "effect": "NoSchedule"}
    tolerant = rel.claim("tolerant", heron, [unhealthy])
    emulator.set_online("fake_torino", False, reason="cryostat warm-up")
    try:
        for lane in sorted(TORINO_LANES):
            wait_until(
                lambda lane=lane: [t["value"] for t in taints(release, lane)] == ["offline"],
                60,
                f"an 'offline' taint on {lane}",
            )
        (taint,) = taints(release, f"{TORINO}-lane-0")
        assert (taint["key"], taint["effect"]) == (f"{rel.DRIVER}/unhealthy", "NoSchedule")
        assert set(release.devices(node=NODE)) >= TORINO_LANES  # published, not withdrawn
        local_cluster.apply(
            [
                rel.claim("plain", heron),
                tolerant,
                rel.pod("plain", claims={"qpu": {"resourceClaimName": "plain"}}),
                rel.pod("tolerant", claims={"qpu": {"resourceClaimName": "tolerant"}}),
            ],
            "-n",
            ns,
        )

        def allocated(name: str) -> str | None:
            got = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", name)
            results = (got.get("status", {}).get("allocation") or {}).get("devices", {})
            return (results.get("results") or [{}])[0].get("device")

        # The scheduler allocates a tainted device only to the claim that tolerates it.
        device = wait_until(lambda: allocated("tolerant"), 60, "the tolerant claim allocated")
        assert device in TORINO_LANES
        wait_unschedulable(local_cluster, ns, "plain")
        assert allocated("plain") is None
    finally:
        emulator.set_online("fake_torino", True)
    for lane in sorted(TORINO_LANES):
        wait_until(lambda lane=lane: not taints(release, lane), 60, f"the taint on {lane} gone")
    rel.wait_pod(local_cluster, ns, "plain", timeout=120)
    rel.wait_pod(local_cluster, ns, "tolerant", timeout=120)


PAUSE_REASON = (
    "cryostat warm-up after a helium refill; back online around 14:00 UTC per the vendor status "
    "page"
)


def health_messages(lc: LocalCluster, ns: str, pod: str) -> list[tuple[str, str]]:
    """The (health, message) the kubelet put in the pod's status from our health stream."""
    statuses = rel.pod_phase(lc, ns, pod).get("containerStatuses") or []
    return [
        (r.get("health", ""), r.get("message", ""))
        for s in statuses
        for a in s.get("allocatedResourcesStatus") or []
        for r in a.get("resources") or []
    ]


@pytest.mark.usefixtures("taint_mode")
def test_paused_backend_tainted_with_the_vendors_reason_until_resumed(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    """The vendor pauses the QPU (maintenance): its devices carry ``<driver>/paused=<reason>``
    (the reason cut to a label value; in full on the QuantumBackend and in the pod's device
    health), a plain claim waits, a claim tolerating it runs; resumed, the taint goes."""
    lc = local_cluster
    heron = f'{ATTR}.resourceId == "fake_torino"'
    paused = {"key": f"{rel.DRIVER}/paused", "operator": "Exists", "effect": "NoSchedule"}
    before = emulator.open_ids()
    emulator.pause("fake_torino", PAUSE_REASON)
    try:
        value = "cryostat-warm-up-after-a-helium-refill--back-online-around-14-0"  # 63
        for lane in sorted(TORINO_LANES):
            wait_until(
                lambda lane=lane: (
                    [(t["key"], t.get("value")) for t in taints(release, lane)]
                    == [(f"{rel.DRIVER}/paused", value)]
                ),
                60,
                f"a 'paused' taint with the vendor's reason on {lane}",
            )
        assert taints(release, f"{TORINO}-lane-0")[0]["effect"] == "NoSchedule"
        wait_until(
            lambda: release.condition(TORINO).get("reason") == "BackendPaused",
            60,
            "the operator to report BackendPaused",
        )
        assert PAUSE_REASON in release.condition(TORINO)["message"]
        lc.apply(
            [
                rel.claim("plain", heron),
                rel.claim("tolerant", heron, [paused]),
                rel.pod("plain", claims={"qpu": {"resourceClaimName": "plain"}}),
                rel.pod("tolerant", claims={"qpu": {"resourceClaimName": "tolerant"}}),
            ],
            "-n",
            ns,
        )
        rel.wait_pod(lc, ns, "tolerant")
        assert rel.printed_env(lc, ns, "tolerant")["QRMI_JOB_QPU_RESOURCES"] == "fake_torino"
        wait_unschedulable(lc, ns, "plain")
        plain = lc.kubectl_json("-n", ns, "get", "resourceclaim", "plain")
        assert not plain.get("status", {}).get("allocation")
        # The kubelet shows the full reason on the pod that holds the paused device.
        got = wait_until(
            lambda: [m for m in health_messages(lc, ns, "tolerant") if PAUSE_REASON in m[1]],
            60,
            "the device health with the vendor's reason in the tolerant pod's status",
        )
        print(f"tolerant pod device health: {got}")
    finally:
        emulator.resume("fake_torino")
    for lane in sorted(TORINO_LANES):
        wait_until(lambda lane=lane: not taints(release, lane), 60, f"the taint on {lane} gone")
    rel.wait_pod(lc, ns, "plain", timeout=120)
    for name in ("plain", "tolerant"):
        lc.kubectl("-n", ns, "delete", "pod", name, "--wait=true", "--timeout=60s")
    wait_until(lambda: not emulator.open_ids() - before, 60, "every session released")
