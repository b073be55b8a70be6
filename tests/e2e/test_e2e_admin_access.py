"""Admin access on the real cluster: a monitoring pod whose claim asks ``adminAccess: true``
in a namespace labelled ``resource.kubernetes.io/admin-access: "true"`` runs with the QPU's
metadata and status and no session; the emulator opens none, and normal claims still take
every lane of the backend meanwhile. Without the label the apiserver refuses the claim."""

from __future__ import annotations

import json
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

from .conftest import TORINO

pytestmark = pytest.mark.cluster

ATTR = 'device.attributes["qpu.quantum.example.com"]'
ON_TORINO = f'{ATTR}.resourceId == "fake_torino"'
ADMIN_LABEL = "resource.kubernetes.io/admin-access"


def admin_claim(name: str) -> dict[str, Any]:
    doc = rel.claim(name, ON_TORINO)
    doc["spec"]["devices"]["requests"][0]["exactly"]["adminAccess"] = True
    return doc


def test_admin_access_reads_metadata_without_a_session(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    lc = local_cluster
    # Not labelled yet: the apiserver refuses the claim, saying what is missing.
    refused = lc.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(admin_claim("early")),
                         check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "adminAccess" in refused.stderr
    assert ADMIN_LABEL in refused.stderr, refused.stderr
    print(f"unlabelled namespace: {refused.stderr.strip()}")

    lc.kubectl("label", "namespace", ns, f"{ADMIN_LABEL}=true")
    before = emulator.open_ids()
    torino_sessions = {s["id"] for s in emulator.sessions("fake_torino")}
    monitor = rel.pod(
        "monitor",
        claims={"qpu": {"resourceClaimName": "monitor"}},
        command=["sh", "-c", rel.ADMIN_ENV_SCRIPT + rel.STAY],
    )
    lc.apply([admin_claim("monitor"), monitor], "-n", ns)
    rel.wait_pod(lc, ns, "monitor")
    env = rel.printed_env(lc, ns, "monitor")
    (result,) = lc.kubectl_json("-n", ns, "get", "resourceclaim", "monitor")["status"][
        "allocation"
    ]["devices"]["results"]
    assert result["adminAccess"] is True
    assert result["pool"] == NODE
    assert env["QPU_ADMIN_ACCESS"] == "true"
    assert env["QPU_ADMIN_RESOURCES"] == "fake_torino"
    assert env["QPU_ADMIN_TYPES"] == "ibm-quantum-compute-service"
    assert env["fake_torino_QPU_BACKEND"] == TORINO
    assert env["fake_torino_QPU_DEVICE"] == result["device"]
    assert env["fake_torino_QPU_STATUS"] == "online"
    metadata = json.loads(env["fake_torino_QPU_METADATA"])
    assert (metadata["resourceId"], metadata["status"]) == ("fake_torino", "online")
    assert "QRMI_IBM_QCS_ENDPOINT" in metadata["config"]
    # Nothing of the job contract: no resource list, no token, no credential.
    assert not [k for k in env if "QRMI" in k or k.startswith("SLURM_")], env
    # The emulator opened no session for it.
    assert {s["id"] for s in emulator.sessions("fake_torino")} == torino_sessions

    (entry,) = wait_until(
        lambda: (
            lc.kubectl_json("-n", ns, "get", "resourceclaim", "monitor").get("status") or {}
        ).get("devices"),
        30,
        "status.devices of the admin claim",
    )
    assert entry["conditions"][0]["reason"] == "AdminAccess"
    assert entry["data"]["adminAccess"] is True
    assert entry["data"]["holdsSession"] is False

    # The admin allocation takes no lane: two normal claims get both lanes of the backend
    # while the monitor runs, each with its own session.
    jobs = ("job-a", "job-b")
    docs: list[dict[str, Any]] = []
    for name in jobs:
        docs += [
            rel.claim(name, ON_TORINO),
            rel.pod(name, claims={"qpu": {"resourceClaimName": name}}),
        ]
    lc.apply(docs, "-n", ns)
    tokens = set()
    for name in jobs:
        rel.wait_pod(lc, ns, name)
        job_env = rel.printed_env(lc, ns, name)
        assert job_env["QRMI_JOB_QPU_RESOURCES"] == "fake_torino"
        tokens.add(job_env["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"])
    lanes = {
        lc.kubectl_json("-n", ns, "get", "resourceclaim", name)["status"]["allocation"]["devices"][
            "results"
        ][0]["device"]
        for name in jobs
    }
    assert lanes == {f"{TORINO}-lane-0", f"{TORINO}-lane-1"}
    assert emulator.open_ids() - before == tokens
    assert rel.pod_phase(lc, ns, "monitor")["phase"] == "Running"

    for name in (*jobs, "monitor"):
        lc.kubectl("-n", ns, "delete", "pod", name, "--wait=true", "--timeout=60s")
    wait_until(lambda: not emulator.open_ids() - before, 60, "every session released")
