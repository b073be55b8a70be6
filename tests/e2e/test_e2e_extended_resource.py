"""``quantum.example.com/qpu: 1`` served by DRA when the device plugin is off: the chart's
DeviceClass carries ``extendedResourceName``, so the scheduler turns the plain request into
a claim for our driver (DRAExtendedResource, GA in 1.37), which the kubelet prepares like
any other. The release is upgraded with ``devicePlugin.enabled=false`` and put back."""

from __future__ import annotations

import pytest
import yaml

from testsupport import packaging
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster
EXAMPLE = packaging.MANIFESTS / "examples" / "dra" / "extended-resource-pod.yaml"
IDS = {"fake_manila", "fake_torino", "FRESNEL", "EMU_FREE"}


@pytest.mark.usefixtures("without_device_plugin")
def test_extended_resource_is_served_through_the_deviceclass(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    # The README's example, unchanged.
    (example,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    local_cluster.apply([example], "-n", ns)
    name = example["metadata"]["name"]
    rel.wait_pod(local_cluster, ns, name, "Succeeded")
    assert local_cluster.kubectl("-n", ns, "logs", name).stdout.strip() in IDS

    # A pod that stays, to look at the claim the scheduler made for it.
    local_cluster.apply([rel.pod("plain", limits={rel.RESOURCE: 1})], "-n", ns)
    rel.wait_pod(local_cluster, ns, "plain")
    env = rel.printed_env(local_cluster, ns, "plain")
    rid = env["QRMI_JOB_QPU_RESOURCES"]
    assert rid in IDS
    assert f"{rid}_QRMI_JOB_ACQUISITION_TOKEN" in env
    status = rel.pod_phase(local_cluster, ns, "plain")
    claim_name = status["extendedResourceClaimStatus"]["resourceClaimName"]
    claim = local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", claim_name)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == rel.DRIVER
    assert result["device"].startswith(
        {
            "fake_manila": "emulator-manila",
            "fake_torino": "e2e-torino",
            "FRESNEL": "emulator-fresnel",
            "EMU_FREE": "e2e-emu-free",
        }[rid]
    )
    token = env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"]
    local_cluster.kubectl("-n", ns, "delete", "pod", "plain", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: (
            local_cluster.kubectl(
                "-n", ns, "get", "resourceclaim", claim_name, check=False
            ).returncode
            != 0
        ),
        60,
        "the scheduler's claim deleted with its pod",
    )
    if rid.startswith("fake_"):  # IBM: acquire opened a Runtime session; release closes it
        wait_until(
            lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
            60,
            "the session released",
        )
