"""A prepared claim says what it holds, on the real 1.37 apiserver: the chart's driver writes
``status.devices`` (server-side apply of the status subresource, authorized per driver on
``resourceclaims/driver``) for a node-bound QPU and for a shared one, ``kubectl describe``
shows it, the claim's deallocation drops it, and a refused write neither fails the prepare
nor leaks a session."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

from .conftest import TORINO

pytestmark = pytest.mark.cluster
FIELD_MANAGER = f"{rel.DRIVER}/{NODE}"


def claim_on(name: str, resource_id: str) -> dict[str, Any]:
    return rel.claim(name, f'device.attributes["{rel.DRIVER}"].resourceId == "{resource_id}"')


def claim(lc: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    return lc.kubectl_json("-n", ns, "get", "resourceclaim", name, "--show-managed-fields")


def device_status(lc: LocalCluster, ns: str, name: str) -> list[dict[str, Any]] | None:
    return (claim(lc, ns, name).get("status") or {}).get("devices") or None


def open_sessions(emulator: rel.AdminClient, before: set[str]) -> list[str]:
    return [s["id"] for s in emulator.sessions(open_only=True) if s["id"] not in before]


def test_claim_status_says_what_each_device_holds(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    lc = local_cluster
    before = {s["id"] for s in emulator.sessions(open_only=True)}
    cases = {  # claim -> (backend, resource id, pool): a shared pool and the node's pool
        "manila": ("emulator-manila", "fake_manila", "shared/emulator-manila"),
        "torino": (TORINO, "fake_torino", NODE),
    }
    docs: list[dict[str, Any]] = []
    for name, (_, rid, _) in cases.items():
        docs += [
            claim_on(name, rid),
            rel.pod(f"{name}-job", claims={"qpu": {"resourceClaimName": name}}),
        ]
    started = time.time()
    lc.apply(docs, "-n", ns)
    for name, (backend, rid, pool) in cases.items():
        rel.wait_pod(lc, ns, f"{name}-job")
        running = time.time() - started
        (entry,) = wait_until(
            lambda n=name: device_status(lc, ns, n), 30, f"status.devices of claim {name}"
        )
        print(
            f"claim {name}: pod Running {running:.1f}s, status.devices seen "
            f"{time.time() - started:.1f}s after the claim and pod were created"
        )
        env = rel.printed_env(lc, ns, f"{name}-job")
        token = env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"]
        (result,) = claim(lc, ns, name)["status"]["allocation"]["devices"]["results"]
        assert (entry["driver"], entry["pool"], entry["device"]) == (
            rel.DRIVER,
            pool,
            result["device"],
        )
        assert result["pool"] == pool
        (cond,) = entry["conditions"]
        assert (cond["type"], cond["status"], cond["reason"]) == (
            "Ready",
            "True",
            "SessionAcquired",
        )
        data = entry["data"]
        assert data["backend"] == backend
        assert data["resourceId"] == rid
        assert data["resourceType"] == "ibm-quantum-compute-service"
        assert data["node"] == NODE
        assert data["holdsSession"] is True
        # A Qiskit Runtime session id acts on nothing without the IAM key: shown as it is.
        assert data["sessionId"] == token
        session = emulator.session(token)
        assert session is not None
        assert data["sessionMode"] == session["mode"] == "dedicated"
        assert data["sessionMaxTtlSeconds"] == session["max_ttl"]
        acquired = datetime.strptime(data["acquiredAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert started - 1 <= acquired.timestamp() <= time.time() + 1
        assert isinstance(data.get("pendingJobsAtAcquire", 0), int)
        # Written by our field manager through the status subresource.
        managers = {
            (m["manager"], m.get("subresource"))
            for m in claim(lc, ns, name)["metadata"]["managedFields"]
        }
        assert (FIELD_MANAGER, "status") in managers
        described = lc.kubectl("-n", ns, "describe", "resourceclaim", name).stdout
        for shown in ("SessionAcquired", token, backend):
            assert shown in described, f"{shown!r} not in:\n{described}"

    # Unprepare leaves the status to the apiserver: the claim's deallocation drops it.
    for name in cases:
        lc.kubectl("-n", ns, "delete", "pod", f"{name}-job", "--wait=true", "--timeout=60s")
    for name in cases:
        got = wait_until(
            lambda n=name: (
                (c := claim(lc, ns, n)).get("status", {}).get("allocation") is None and c
            ),
            60,
            f"claim {name} deallocated",
        )
        assert "devices" not in got.get("status", {}), json.dumps(got["status"])
    wait_until(lambda: not open_sessions(emulator, before), 60, "every session released")


def test_a_refused_status_write_fails_nothing_and_leaks_nothing(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    """Without arbitrary-node (``dra.claimStatus.sharedPools=false``) the apiserver refuses
    the status of a claim on a shared pool (its allocation names no node): the pod runs all
    the same, the driver logs and counts it, and the claim's session is released after."""
    lc = local_cluster
    before = {s["id"] for s in emulator.sessions(open_only=True)}

    def shared_pools(on: bool) -> None:
        release.upgrade(values={"dra.claimStatus.sharedPools": str(on).lower()}, timeout=120)

    def forbidden() -> float:
        text = release.metrics("dra", 9402)
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('qpu_k8s_dra_claim_status_writes_total{result="forbidden"}')
        )

    shared_pools(False)
    try:
        refused = forbidden()
        lc.apply(
            [
                claim_on("manila", "fake_manila"),
                rel.pod("job", claims={"qpu": {"resourceClaimName": "manila"}}),
            ],
            "-n",
            ns,
        )
        rel.wait_pod(lc, ns, "job")
        env = rel.printed_env(lc, ns, "job")
        token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
        wait_until(lambda: forbidden() > refused, 30, "the refused status write counted")
        assert device_status(lc, ns, "manila") is None
        uid = claim(lc, ns, "manila")["metadata"]["uid"]
        assert any(
            "claim status not written" in line and uid in line
            for line in release.logs("dra").splitlines()
        )
    finally:
        shared_pools(True)
    lc.kubectl("-n", ns, "delete", "pod", "job", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
        60,
        "the session released",
    )
    assert emulator.release_calls(token) == 1
    wait_until(lambda: not open_sessions(emulator, before), 60, "every session released")
