"""``helm install`` of the unchanged chart on the real cluster: every component runs as a pod,
the emulator's QuantumBackends become Ready, kubectl shows them with the printer columns,
the node agents advertise every lane (device plugin) and publish slices (DRA driver,
operator for the shared QPUs)."""

from __future__ import annotations

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster

from .conftest import ALL_LANES, TORINO

pytestmark = pytest.mark.cluster

COMPONENTS = {
    "operator": rel.AGENTS_IMAGE,
    "device-plugin": rel.AGENTS_IMAGE,
    "dra": rel.AGENTS_IMAGE,
    "emulator": rel.EMULATOR_IMAGE,
}


def test_every_component_runs_as_a_pod_of_the_chart(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    status = local_cluster.helm("status", release.name, "-n", release.namespace, "-o", "json")
    assert '"status":"deployed"' in status.stdout.replace(" ", "")
    for component, image in COMPONENTS.items():
        (pod,) = release.pods(component)
        assert pod["status"]["phase"] == "Running", component
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"], component
        assert container["image"].endswith(image.split("/", 1)[1]), container["image"]
        assert container["restartCount"] == 0, f"{component} restarted"
        if component in ("device-plugin", "dra"):
            assert pod["spec"]["nodeName"] == NODE


def test_quantumbackends_ready_and_shown_with_printer_columns(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    out = local_cluster.kubectl("get", "quantumbackends").stdout.splitlines()
    assert out[0].split() == ["NAME", "TYPE", "ACCESS", "QUBITS", "LANES", "READY", "AGE"]
    rows = {line.split()[0]: line.split()[1:6] for line in out[1:]}
    assert rows["emulator-manila"] == ["ibm-quantum-compute-service", "shared", "5", "2", "True"]
    assert rows["emulator-fresnel"] == ["pasqal-cloud", "shared", "80", "1", "True"]
    assert rows[TORINO] == ["ibm-quantum-compute-service", "node-bound", "133", "2", "True"]
    wide = local_cluster.kubectl("get", "qb", "emulator-manila", "-o", "wide").stdout.split()
    assert {"REASON", "RESOURCE"} <= set(wide)
    assert "Online" in wide
    assert "fake_manila" in wide
    explained = local_cluster.kubectl("explain", "quantumbackend.spec.lanes").stdout
    assert "How many pods may hold this QPU at once" in explained


def test_agents_advertise_every_lane_and_publish_slices(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    assert release.allocatable() == len(ALL_LANES)
    node_pool = release.slices(node=NODE)
    assert {d["name"] for s in node_pool for d in s["spec"]["devices"]} == {
        f"{TORINO}-lane-0",
        f"{TORINO}-lane-1",
    }
    for s in node_pool:
        assert s["metadata"]["ownerReferences"][0]["kind"] == "Node"
    shared = release.slices(pool="shared/emulator-manila")
    assert len(shared) == 1
    assert shared[0]["spec"]["allNodes"] is True
    manila = shared[0]["spec"]["devices"][0]["attributes"]
    assert manila["qubits"] == {"int": 5}
    assert manila["vendor"] == {"string": "ibm"}
    dc = local_cluster.kubectl_json("get", "deviceclass", rel.DRIVER)
    assert dc["spec"]["extendedResourceName"] == rel.RESOURCE
    vap = local_cluster.kubectl(
        "get", "validatingadmissionpolicies,validatingadmissionpolicybindings", "-o", "name"
    ).stdout
    assert "qpu-claim-parameters.quantum.example.com" in vap
