"""DRA on the real scheduler, kubelet and containerd: the README's claims by CEL get the
device their selector means, the kubelet calls our driver's NodePrepareResources, containerd
injects the environment from our CDI spec (read inside the container), and a claim shared
by two pods is acquired once and released once, after both are gone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from testsupport import packaging
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster
EXAMPLES = packaging.MANIFESTS / "examples" / "dra"
CDI_DIR = Path("/var/run/cdi")


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.mark.parametrize(
    ("file", "pod", "expected"),
    [
        # >= 100 qubits and not a simulator: the 133-qubit Heron, not Pasqal's 100-atom EMU_FREE.
        ("min-qubits.yaml", "big-circuit", "fake_torino"),
        # neutral-atom hardware: FRESNEL, not the EMU_FREE simulator.
        ("neutral-atom.yaml", "pulser-job", "FRESNEL"),
        # two-qubit error < 0.5 % and T1 >= 150 us: only the Heron's calibration passes.
        ("low-error.yaml", "", "fake_torino"),
    ],
)
def test_cel_claims_get_the_device_their_selector_means(  # noqa: PLR0917
    local_cluster: LocalCluster, release: rel.Release, ns: str, file: str, pod: str, expected: str
) -> None:
    docs = example(file)
    if not pod:  # the example is a claim only: a pod of ours uses it
        (claim,) = docs
        pod = "low-error-job"
        docs.append(
            rel.pod(
                pod, stay=False, claims={"qpu": {"resourceClaimName": claim["metadata"]["name"]}}
            )
        )
    local_cluster.apply(docs, "-n", ns)
    rel.wait_pod(local_cluster, ns, pod, "Succeeded")
    log = local_cluster.kubectl("-n", ns, "logs", pod).stdout
    got = log.split("QRMI_JOB_QPU_RESOURCES=")[-1].split()[0] if "=" in log else log.strip()
    assert got == expected, log


def cdi_specs() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in CDI_DIR.glob("*.json")}


def test_cdi_env_reaches_the_container_and_goes_with_the_claim(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    claim = rel.claim("manila", f'device.attributes["{rel.DRIVER}"].resourceId == "fake_manila"')
    local_cluster.apply(
        [claim, rel.pod("reader", claims={"qpu": {"resourceClaimName": "manila"}})], "-n", ns
    )
    rel.wait_pod(local_cluster, ns, "reader")
    env = rel.printed_env(local_cluster, ns, "reader")
    assert env["QRMI_JOB_QPU_RESOURCES"] == "fake_manila"
    assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    assert env["SLURM_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    assert env["fake_manila_QRMI_IBM_QCS_ENDPOINT"] == f"{release.emulator_service_url()}/api/v1"
    apikey = next(v for v in release.credential_values() if "apikey" in v)
    assert env["fake_manila_QRMI_IBM_QCS_IAM_APIKEY"] == (
        "sha256:" + hashlib.sha256(apikey.encode()).hexdigest()
    )
    token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    session = emulator.session(token)
    assert session is not None
    assert session["state"] != "closed"

    # Where the env came from: our CDI spec for this claim (root-only), which the claim's
    # allocation and the pod's status name.
    got = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", "manila")
    uid = got["metadata"]["uid"]
    (result,) = got["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == rel.DRIVER
    assert result["pool"] == "shared/emulator-manila"
    specs = {n: s for n, s in cdi_specs().items() if uid in n}
    assert len(specs) == 1, sorted(cdi_specs())
    (name, spec) = next(iter(specs.items()))
    assert (CDI_DIR / name).stat().st_mode & 0o077 == 0
    env_lines = spec["devices"][0]["containerEdits"]["env"]
    assert f"fake_manila_QRMI_JOB_ACQUISITION_TOKEN={token}" in env_lines
    assert got["status"]["reservedFor"][0]["name"] == "reader"

    local_cluster.kubectl("-n", ns, "delete", "pod", "reader", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
        60,
        "NodeUnprepareResources to release the session",
    )
    assert emulator.release_calls(token) == 1
    wait_until(lambda: not any(uid in n for n in cdi_specs()), 30, "the claim's CDI spec removed")


def test_shared_claim_serves_two_pods_and_is_released_once_after_both(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    docs = example("shared-claim-two-pods.yaml")
    claim = next(d for d in docs if d["kind"] == "ResourceClaim")
    pods = [
        rel.pod(p["metadata"]["name"], claims={"qpu": {"resourceClaimName": "shared-qpu"}})
        for p in docs
        if p["kind"] == "Pod"
    ]
    assert [p["metadata"]["name"] for p in pods] == ["shared-qpu-a", "shared-qpu-b"]
    before = {s["id"] for s in emulator.sessions()}
    local_cluster.apply([claim, *pods], "-n", ns)
    envs = []
    for p in pods:
        rel.wait_pod(local_cluster, ns, p["metadata"]["name"])
        envs.append(rel.printed_env(local_cluster, ns, p["metadata"]["name"]))
    rid = envs[0]["QRMI_JOB_QPU_RESOURCES"]
    assert rid in ("fake_manila", "fake_torino")  # vendor == "ibm"
    assert envs[0] == envs[1]  # one claim, one acquisition: the same session in both pods
    token = envs[0][f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"]
    opened = [s["id"] for s in emulator.sessions(rid) if s["id"] not in before]
    assert opened == [token]
    got = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", "shared-qpu")
    assert sorted(r["name"] for r in got["status"]["reservedFor"]) == [
        "shared-qpu-a",
        "shared-qpu-b",
    ]

    local_cluster.kubectl("-n", ns, "delete", "pod", "shared-qpu-a", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: (
            [
                r["name"]
                for r in local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", "shared-qpu")[
                    "status"
                ].get("reservedFor", [])
            ]
            == ["shared-qpu-b"]
        ),
        60,
        "the claim reserved for pod b only",
    )
    assert emulator.session(token)["state"] != "closed"  # type: ignore[index]
    assert emulator.release_calls(token) == 0
    local_cluster.kubectl("-n", ns, "delete", "pod", "shared-qpu-b", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
        60,
        "the session released after the last pod",
    )
    assert emulator.release_calls(token) == 1
    assert [s["id"] for s in emulator.sessions(rid) if s["id"] not in before] == [token]


def test_claims_from_a_template_never_share_a_lane(
    local_cluster: LocalCluster, release: rel.Release, ns: str
) -> None:
    from .conftest import ALL_LANES

    (template,) = [d for d in example("any-qpu.yaml") if d["kind"] == "ResourceClaimTemplate"]
    names = [f"any-{i}" for i in range(len(ALL_LANES) + 1)]
    local_cluster.apply(
        [template]
        + [rel.pod(n, claims={"qpu": {"resourceClaimTemplateName": "any-qpu"}}) for n in names],
        "-n",
        ns,
    )

    def running() -> list[str] | None:
        pods = local_cluster.kubectl_json("-n", ns, "get", "pods")["items"]
        up = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
        return up if len(up) == len(ALL_LANES) else None

    up = wait_until(running, 240, f"{len(ALL_LANES)} pods running, one per lane", every=1.0)
    claims = local_cluster.kubectl_json("-n", ns, "get", "resourceclaims")["items"]
    devices = [
        r["device"]
        for c in claims
        for r in (c.get("status", {}).get("allocation") or {}).get("devices", {}).get("results", [])
    ]
    assert sorted(devices) == sorted(ALL_LANES)  # every lane once, none twice
    (left,) = set(names) - set(up)
    assert rel.pod_phase(local_cluster, ns, left)["phase"] == "Pending"


def test_claim_parameters_session_mode_and_a_secret_in_the_claims_namespace(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    """The README's per-user credentials: the claim names a Secret of its own namespace;
    the chart lets the driver read it (``dra.claimCredentials``), put back after."""
    apikey = next(v for v in release.credential_values() if "apikey" in v)
    local_cluster.kubectl(
        "-n", ns, "create", "secret", "generic", "alice-ibm",
        f"--from-literal=QRMI_IBM_QCS_IAM_APIKEY={apikey}",
    )  # fmt: skip
    (doc,) = example("claim-parameters.yaml")
    name = doc["metadata"]["name"]

    def allow(namespaces: list[str]) -> None:
        release.upgrade(json_values={"dra.claimCredentials.namespaces": namespaces}, timeout=120)

    allow([ns])
    try:
        local_cluster.apply(
            [doc, rel.pod("alice", claims={"qpu": {"resourceClaimName": name}})], "-n", ns
        )
        rel.wait_pod(local_cluster, ns, "alice")
    finally:
        allow([])
    env = rel.printed_env(local_cluster, ns, "alice")
    rid = env["QRMI_JOB_QPU_RESOURCES"]
    session = emulator.session(env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"])
    assert session is not None
    assert (session["mode"], session["max_ttl"]) == ("batch", 3600)
    assert env[f"{rid}_QRMI_IBM_QCS_IAM_APIKEY"] == (
        "sha256:" + hashlib.sha256(apikey.encode()).hexdigest()
    )
