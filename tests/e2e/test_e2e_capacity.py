"""Shared or exclusive QPU by the claim's choice, on the real 1.37 scheduler and kubelet with
the chart's driver and operator upgraded to ``dra.deviceModel=capacity``: one device per QPU
with its lanes as consumable capacity. Two claims taking one lane each share the 2-lane
e2e-torino (two batch sessions at once); a claim asking for both lanes
(``examples/dra/exclusive-qpu.yaml``) stays unallocated until they end, then gets the QPU
with a dedicated session; every session is closed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from testsupport import packaging
from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

from .conftest import ALL_LANES, TORINO

pytestmark = pytest.mark.cluster
TORINO_CEL = f'device.attributes["{rel.DRIVER}"].resourceId == "fake_torino"'
QPU_DEVICES = {"emulator-manila", "emulator-fresnel", TORINO, "e2e-emu-free"}


def set_model(release: rel.Release, model: str, devices: set[str]) -> None:
    """``helm upgrade --reuse-values`` with ``dra.deviceModel``; wait for the driver's and
    the operator's slices to publish exactly ``devices``."""
    release.upgrade(values={"dra.deviceModel": model})
    wait_until(
        lambda: set(release.devices()) == devices,
        180,
        f"slices of the {model} device model: {sorted(devices)}",
        every=1.0,
    )


@pytest.fixture
def capacity_model(local_cluster: LocalCluster, release: rel.Release) -> Iterator[None]:
    set_model(release, "capacity", QPU_DEVICES)
    try:
        yield
    finally:
        set_model(release, "lanes", ALL_LANES)


def allocation(lc: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    status = lc.kubectl_json("-n", ns, "get", "resourceclaim", name).get("status") or {}
    result: dict[str, Any] | None = status.get("allocation")
    return result


def unschedulable(lc: LocalCluster, ns: str, pod: str) -> str | None:
    """The scheduler's message once it has tried the pod and found no device for it."""
    for cond in rel.pod_phase(lc, ns, pod).get("conditions") or []:
        if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message", ""))
    return None


def test_two_shared_claims_coexist_and_an_exclusive_claim_waits_until_they_end(
    local_cluster: LocalCluster,
    release: rel.Release,
    capacity_model: None,
    ns: str,
    emulator: rel.AdminClient,
) -> None:
    lc = local_cluster
    (device,) = (d for n, d in release.devices(node=NODE).items() if n == TORINO)
    assert device["allowMultipleAllocations"] is True
    assert device["capacity"]["lanes"]["value"] == "2"
    before = {s["id"] for s in emulator.sessions("fake_torino")}

    # Two claims naming no lanes: one lane each, both on the one QPU device at once.
    shared = ["shared-a", "shared-b"]
    lc.apply(
        [
            doc
            for name in shared
            for doc in (
                rel.claim(name, TORINO_CEL),
                rel.pod(name, claims={"qpu": {"resourceClaimName": name}}),
            )
        ],
        "-n",
        ns,
    )
    tokens = []
    for name in shared:
        rel.wait_pod(lc, ns, name)
        tokens.append(rel.printed_env(lc, ns, name)["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"])
    results = [allocation(lc, ns, n)["devices"]["results"][0] for n in shared]  # type: ignore[index]
    assert {r["device"] for r in results} == {TORINO}
    assert [r["consumedCapacity"] for r in results] == [{"lanes": "1"}] * 2
    assert len({r["shareID"] for r in results}) == 2
    assert len(set(tokens)) == 2
    assert [emulator.session(t)["mode"] for t in tokens] == ["batch", "batch"]  # type: ignore[index]

    # All lanes: the scheduler finds no device while a shared claim holds one.
    (claim, *_) = (
        d for d in yaml.safe_load_all(
            (packaging.MANIFESTS / "examples" / "dra" / "exclusive-qpu.yaml").read_text()
        ) if d
    )  # fmt: skip
    name = claim["metadata"]["name"]
    lc.apply([claim, rel.pod("exclusive", claims={"qpu": {"resourceClaimName": name}})], "-n", ns)
    message = wait_until(
        lambda: unschedulable(lc, ns, "exclusive"), 120, "the scheduler to try the exclusive pod"
    )
    assert allocation(lc, ns, name) is None, message

    # The shared claims end: the exclusive one gets the whole QPU, in a dedicated session.
    lc.kubectl("-n", ns, "delete", "pod", *shared, "--wait=true", "--timeout=60s")
    lc.kubectl("-n", ns, "delete", "resourceclaim", *shared, "--wait=true", "--timeout=60s")
    for token in tokens:
        wait_until(
            lambda t=token: emulator.session(t)["state"] == "closed",  # type: ignore[misc]
            60,
            "the shared claims' sessions released",
        )
    rel.wait_pod(lc, ns, "exclusive")
    token = rel.printed_env(lc, ns, "exclusive")["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"]
    assert emulator.session(token)["mode"] == "dedicated"  # type: ignore[index]
    (result,) = allocation(lc, ns, name)["devices"]["results"]  # type: ignore[index]
    assert (result["device"], result["consumedCapacity"]) == (TORINO, {"lanes": "2"})

    # Its status names the share, as the apiserver keys a shared device's entries.
    def status_entry() -> dict[str, Any] | None:
        got = lc.kubectl_json("-n", ns, "get", "resourceclaim", name)
        entries = (got.get("status") or {}).get("devices") or []
        return entries[0] if entries else None

    entry = wait_until(status_entry, 60, "the exclusive claim's status.devices")
    assert entry["shareID"] == result["shareID"]
    assert (entry["data"]["sessionMode"], entry["data"]["lanes"]) == ("dedicated", 2)

    lc.kubectl("-n", ns, "delete", "pod", "exclusive", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
        60,
        "the exclusive claim's session released",
    )
    opened = [s for s in emulator.sessions("fake_torino") if s["id"] not in before]
    assert len(opened) == 3
    assert [s for s in opened if s["state"] != "closed"] == []
