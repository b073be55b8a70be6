"""The allocation examples on the real 1.37 scheduler and controller-manager: a prioritized
list falls through in its order as QPUs fill up, and a DeviceTaintRule maintenance window
keeps new claims off a QPU, lets a tolerating claim in, evicts it with NoExecute (its
session released) and, once deleted, lets the waiting pod run."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

from .conftest import EMU_FREE, TORINO
from .test_e2e_dra import example

pytestmark = pytest.mark.cluster


def _open_sessions(emulator: rel.AdminClient, before: set[str]) -> list[str]:
    return [s["id"] for s in emulator.sessions(open_only=True) if s["id"] not in before]


def _allocation(lc: LocalCluster, ns: str, pod: str) -> dict[str, Any]:
    """The one allocation result of the pod's (generated) claim."""
    status = lc.kubectl_json("-n", ns, "get", "pod", pod)["status"]
    (ref,) = status["resourceClaimStatuses"]
    claim = lc.kubectl_json("-n", ns, "get", "resourceclaim", ref["resourceClaimName"])
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    return dict(result)


def test_first_available_falls_through_in_its_order(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    lc = local_cluster
    before = {s["id"] for s in emulator.sessions(open_only=True)}
    docs = example("first-available.yaml")
    (template,) = [d for d in docs if d["kind"] == "ResourceClaimTemplate"]
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert pod["spec"]["resourceClaims"] == [
        {"name": "qpu", "resourceClaimTemplateName": "qpu-fallback"}
    ]
    lc.apply([template], "-n", ns)
    # One pod at a time, so each allocation sees what the earlier ones hold: the 133-qubit
    # Heron's two lanes, then the other hardware (Manila's two lanes, FRESNEL), then the
    # simulator.
    expected = (
        [("qpu/large", f"{TORINO}-lane-{i}") for i in range(2)]
        + [("qpu/hardware", "")] * 3
        + [("qpu/simulator", f"{EMU_FREE}-lane-0")]
    )
    got: list[tuple[str, str]] = []
    for i in range(len(expected)):
        name = f"fallback-{i}"
        lc.apply(
            [rel.pod(name, claims={"qpu": {"resourceClaimTemplateName": "qpu-fallback"}})],
            "-n",
            ns,
        )
        rel.wait_pod(lc, ns, name)
        result = _allocation(lc, ns, name)
        got.append((result["request"], result["device"]))
    assert [r for r, _ in got] == [r for r, _ in expected], got
    assert sorted(d for _, d in got[:2]) == [f"{TORINO}-lane-0", f"{TORINO}-lane-1"]
    assert sorted(d for _, d in got[2:5]) == [
        "emulator-fresnel-lane-0",
        "emulator-manila-lane-0",
        "emulator-manila-lane-1",
    ]
    assert got[5] == expected[5]
    # Every QPU is taken now: the next pod waits (no fourth choice).
    lc.apply(
        [rel.pod("fallback-extra", claims={"qpu": {"resourceClaimTemplateName": "qpu-fallback"}})],
        "-n",
        ns,
    )
    wait_until(
        lambda: any(
            c.get("reason") == "Unschedulable"
            for c in rel.pod_phase(lc, ns, "fallback-extra").get("conditions") or []
        ),
        60,
        "the extra pod unschedulable",
    )
    lc.kubectl("-n", ns, "delete", "pods", "--all", "--wait=true", "--timeout=120s", timeout=140)
    wait_until(lambda: not _open_sessions(emulator, before), 90, "every session released")


def _manila_claim(name: str, *, tolerate: bool = False) -> dict[str, Any]:
    maintenance = {"key": f"{rel.DRIVER}/maintenance", "operator": "Exists", "effect": "NoSchedule"}
    expression = f'device.attributes["{rel.DRIVER}"].resourceId == "fake_manila"'
    return rel.claim(name, expression, [maintenance] if tolerate else None)


def _unschedulable(lc: LocalCluster, ns: str, pod: str) -> bool:
    status = rel.pod_phase(lc, ns, pod)
    return any(c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])


def test_maintenance_window_keeps_claims_off_evicts_and_ends(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    lc = local_cluster
    before = {s["id"] for s in emulator.sessions(open_only=True)}
    (rule,) = example("maintenance-window.yaml")
    name = rule["metadata"]["name"]
    lc.apply([rule])
    try:
        # NoSchedule: a claim on the QPU waits although both its lanes are free.
        lc.apply(
            [_manila_claim("user"), rel.pod("user", claims={"qpu": {"resourceClaimName": "user"}})],
            "-n",
            ns,
        )
        wait_until(lambda: _unschedulable(lc, ns, "user"), 60, "the user pod unschedulable")
        assert "allocation" not in (
            lc.kubectl_json("-n", ns, "get", "resourceclaim", "user").get("status") or {}
        )

        # The calibration claim tolerates NoSchedule: it runs, with a session.
        lc.apply(
            [
                _manila_claim("calibration", tolerate=True),
                rel.pod("calibration", claims={"qpu": {"resourceClaimName": "calibration"}}),
            ],
            "-n",
            ns,
        )
        rel.wait_pod(lc, ns, "calibration")
        token = rel.printed_env(lc, ns, "calibration")["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
        assert emulator.session(token)["state"] != "closed"  # type: ignore[index]
        assert _unschedulable(lc, ns, "user")

        # NoExecute: the controller-manager evicts the pod (it tolerates NoSchedule only);
        # the kubelet unprepares its claim, and the session is released once.
        evicting = copy.deepcopy(rule)
        evicting["spec"]["taint"]["effect"] = "NoExecute"
        lc.apply([evicting])

        def evicted() -> bool:
            got = lc.kubectl("-n", ns, "get", "pod", "calibration", "-o", "json", check=False)
            return got.returncode != 0 or '"deletionTimestamp"' in got.stdout

        wait_until(evicted, 90, "the calibration pod evicted")
        wait_until(
            lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
            90,
            "the evicted pod's session released",
        )
        assert emulator.release_calls(token) == 1
    finally:
        lc.kubectl("delete", "devicetaintrule", name, "--ignore-not-found", "--wait=true")
    # The window is over: the waiting pod is scheduled and runs.
    rel.wait_pod(lc, ns, "user", timeout=180)
    lc.kubectl("-n", ns, "delete", "pods", "--all", "--wait=true", "--timeout=120s", timeout=140)
    wait_until(lambda: not _open_sessions(emulator, before), 90, "every session released")
