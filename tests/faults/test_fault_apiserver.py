"""Fault 5 (node agents): the apiserver is unreachable for a while.

``qpu-k8s dra-plugin`` runs as a real process against the real 1.37 apiserver of
hack/local-cluster (on a Node object of its own, with the fake kubelet), through a TCP
proxy the test cuts (``netproxy``): first refused (``down``), then a partition where calls
are accepted and never answered (``blackhole``, connections open at the time stay frozen).
While it is gone the driver keeps serving what it knows: claims it prepared are answered
from its checkpoint, unprepare releases, health reaches running pods through the kubelet's
health stream; what needs the apiserver (a new claim, slices) fails within its timeout and
is retried. When it is back, the slices catch up with what changed meanwhile.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.deviceplugin.agent import DevicePlugin
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    ClaimRef,
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
)
from qpu_k8s.fakekubelet.dra import DeviceHealthState
from qpu_k8s.resourceslices.build import GROUP, PLURAL
from testsupport import REPO
from testsupport.deviceplugin import Layout
from testsupport.dra import DraNode
from testsupport.emulator import SECRETS, open_tokens, release_requests, session_of
from testsupport.faults import elapsed, ibm, record_result
from testsupport.names import DRIVER, NODE_LABEL, RESOURCE
from testsupport.netproxy import TcpProxy
from testsupport.processes import terminate_or_kill
from testsupport.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
TOKEN = "fake_manila_QRMI_JOB_ACQUISITION_TOKEN"


@pytest.fixture(scope="module")
def admin(k8s_kubeconfig: Path) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(k8s_kubeconfig)
    )
    return api


@pytest.fixture
def proxy(k8s_kubeconfig: Path, dra_node: DraNode) -> Iterator[tuple[TcpProxy, Path]]:
    """A proxy to the apiserver and a kubeconfig that goes through it."""
    doc = yaml.safe_load(k8s_kubeconfig.read_text())
    server = doc["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").partition(":")
    tcp = TcpProxy(host, int(port or 443))
    doc["clusters"][0]["cluster"]["server"] = f"https://{host}:{tcp.port}"
    path = dra_node.root / "proxy.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    yield tcp, path
    tcp.close()


@pytest.fixture
def k8s_objects(admin: client.ApiClient, dra_node: DraNode) -> Iterator[str]:
    """The test's Node (its name is the pool) and namespace."""
    core = client.CoreV1Api(admin)
    ns = f"flt-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=dra_node.name, labels={NODE_LABEL: dra_node.name})
        )
    )
    yield ns
    core.delete_node(dra_node.name)
    core.delete_namespace(ns)


def _claim(admin: client.ApiClient, ns: str, pool: str, device: str) -> ClaimRef:
    """A claim created and allocated as the scheduler would leave it."""
    custom = client.CustomObjectsApi(admin)
    name = f"c-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "devices": {"requests": [{"name": "qpu", "exactly": {"deviceClassName": DRIVER}}]}
        },
    }
    obj = as_object(custom.create_namespaced_custom_object(GROUP, "v1", ns, "resourceclaims", body))
    obj["status"] = {
        "allocation": {
            "devices": {
                "results": [{"request": "qpu", "driver": DRIVER, "pool": pool, "device": device}]
            }
        }
    }
    custom.replace_namespaced_custom_object_status(GROUP, "v1", ns, "resourceclaims", name, obj)
    return ClaimRef(ns, obj["metadata"]["uid"], name)


def _devices(admin: client.ApiClient, node: str) -> set[str]:
    items = as_object(
        client.CustomObjectsApi(admin).list_cluster_custom_object(GROUP, "v1", PLURAL)
    )
    return {
        d["name"]
        for s in items["items"]
        if s["spec"].get("nodeName") == node
        for d in s["spec"].get("devices") or []
    }


def health(status: str) -> Callable[[dict[tuple[str, str], DeviceHealthState]], bool]:
    return lambda devs: bool(devs) and all(d.health == status for d in devs.values())


def test_apiserver_unreachable_dra_driver_keeps_serving_and_catches_up(
    emu: Emulator,
    admin: client.ApiClient,
    dra_node: DraNode,
    k8s_objects: str,
    proxy: tuple[TcpProxy, Path],
) -> None:
    tcp, kubeconfig = proxy
    ns, node = k8s_objects, dra_node.name
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=node, lanes=2)])
    log_path = dra_node.root / "dra-cli.log"
    env = {
        **os.environ,
        "QPU_K8S_PLUGINS_DIR": str(dra_node.root / "plugins"),
        "QPU_K8S_REGISTRY_DIR": str(dra_node.registry_dir),
        "QPU_K8S_CDI_DIR": str(dra_node.cdi_dir),
        "QPU_K8S_STATE_DIR": str(dra_node.state_dir),
        "QPU_K8S_BOOT_ID_FILE": str(dra_node.root / "boot_id"),
    }
    argv = [
        sys.executable, "-m", "qpu_k8s.cli", "dra-plugin",
        "--node-name", node,
        "--config", str(dra_node.root / "backends.yaml"),
        "--credentials-dir", str(dra_node.creds),
        "--kubeconfig", str(kubeconfig),
        "--metrics-address", "",
        "--resync-seconds", "2",
        "--probe-timeout", "2",
        "--log-level", "debug",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    kubelet = FakeDRAKubelet(dra_node.registry_dir, call_timeout=20)
    kubelet.start()
    try:
        kubelet.wait_for_registration(DRIVER, timeout=60)
        watch = kubelet.watch_health("v1")
        watch.wait_for(health("HEALTHY"), 15)
        lanes = {"ibm-manila-lane-0", "ibm-manila-lane-1"}
        wait_for(lambda: _devices(admin, node) == lanes, 30, "the node's slices")
        held = _claim(admin, ns, node, "ibm-manila-lane-0")
        later = _claim(admin, ns, node, "ibm-manila-lane-1")
        first = kubelet.node_prepare_resources([held])[held.uid]
        assert first.error == ""
        token = dra_node.cdi_env(held.uid)[TOKEN]

        # -- refused: what the driver knows keeps working -----------------------------------
        tcp.set_mode("down")
        down_at = time.monotonic()
        assert kubelet.node_prepare_resources([held])[held.uid] == first  # from the checkpoint
        start = time.monotonic()
        new = kubelet.node_prepare_resources([later])[later.uid]
        refused_s = time.monotonic() - start
        assert new.error
        assert not new.devices
        assert refused_s < 12, f"a prepare needing the apiserver took {refused_s:.1f}s"
        emu.set_online("fake_manila", False, reason="maintenance")
        watch.wait_for(health("UNHEALTHY"), 10)  # running pods still learn it
        wait_for(lambda: "slice publish failed" in log_path.read_text(), 15, "a failed publish")
        assert kubelet.node_unprepare_resources([held]) == {held.uid: ""}  # no apiserver needed
        assert not session_of(emu, token).is_open
        tcp.set_mode("up")
        up_at = time.monotonic()
        wait_for(lambda: _devices(admin, node) == set(), 35, "the offline lanes withdrawn")
        caught_up_down = elapsed(up_at)
        outage_down = round(up_at - down_at, 2)
        emu.set_online("fake_manila", True)
        watch.wait_for(health("HEALTHY"), 10)
        wait_for(lambda: _devices(admin, node) == lanes, 35, "the lanes back")

        # -- partition: calls accepted and never answered ---------------------------------
        tcp.set_mode("blackhole")
        hole_at = time.monotonic()
        start = time.monotonic()
        new = kubelet.node_prepare_resources([later])[later.uid]
        blackholed_s = time.monotonic() - start
        assert new.error
        assert not new.devices
        assert blackholed_s < 15, f"a prepare needing the apiserver took {blackholed_s:.1f}s"
        emu.set_online("fake_manila", False, reason="maintenance")
        watch.wait_for(health("UNHEALTHY"), 10)
        tcp.set_mode("up")  # healed; connections open during the partition stay frozen
        up_at = time.monotonic()
        wait_for(lambda: _devices(admin, node) == set(), 60, "slices caught up after the partition")
        caught_up_hole = elapsed(up_at)
        outage_hole = round(up_at - hole_at, 2)
        emu.set_online("fake_manila", True)
        wait_for(lambda: _devices(admin, node) == lanes, 35, "the lanes back")
        assert kubelet.node_prepare_resources([later])[later.uid].error == ""
        assert kubelet.node_unprepare_resources([later]) == {later.uid: ""}
        assert proc.poll() is None  # never crashed
    finally:
        kubelet.stop()
        terminate_or_kill(proc, 20)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert not any(s in text for s in SECRETS)
    assert '"msg": "resource slices published"' in text  # its log line used to crash it
    assert open_tokens(emu) == set()
    assert all(release_requests(emu, s.id) == 1 for s in emu.state.sessions())
    record_result(
        "apiserver-unavailable-dra",
        refused_prepare_s=round(refused_s, 2),
        blackholed_prepare_s=round(blackholed_s, 2),
        outage_refused_s=outage_down,
        slices_caught_up_after_refused_s=caught_up_down,
        outage_partition_s=outage_hole,
        slices_caught_up_after_partition_s=caught_up_hole,
        leaked=0,
        double_releases=0,
        log_lines=len(text.splitlines()),
        errors_logged=sum(1 for line in text.splitlines() if '"level": "error"' in line),
        json_ok=all(line.startswith("{") for line in text.splitlines() if line),
    )


def test_apiserver_unreachable_device_plugin_keeps_the_node_labels_it_knows(  # noqa: PLR0917
    emu: Emulator,
    admin: client.ApiClient,
    dra_node: DraNode,
    k8s_objects: str,
    proxy: tuple[TcpProxy, Path],
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    start_agent: Callable[..., DevicePlugin],
    layout: Layout,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The device plugin reads only its Node's labels from the apiserver (for node-bound
    backends): while it is gone the last known labels stay, so does the device."""
    tcp, kubeconfig = proxy
    node = dra_node.name  # the Node object of k8s_objects
    layout.write_config([ibm(emu, "local-qpu", "fake_manila", node=node)])
    agent = start_agent(node_name=node, kubeconfig=str(kubeconfig), node_labels_refresh=0.2)
    assert [d.id for d in kubelet.devices(RESOURCE)] == ["local-qpu-lane-0"]
    tcp.set_mode("down")
    with caplog.at_level(logging.WARNING, logger="qpu_k8s.deviceplugin.node"):
        wait_for(lambda: "keeping the last known ones" in caplog.text, 10, "a failed label refresh")
    calls = pod_resources.calls("List")
    wait_for(lambda: pod_resources.calls("List") >= calls + 5, 10, "more reconciles")
    assert [d.id for d in kubelet.devices(RESOURCE) if d.healthy] == ["local-qpu-lane-0"]
    envs = dict(kubelet.allocate(RESOURCE, [["local-qpu-lane-0"]]).container_responses[0].envs)
    assert envs["QRMI_JOB_QPU_RESOURCES"] == "fake_manila"
    tcp.set_mode("up")
    # Back: label changes are seen again (the node leaves the backend's selector).
    client.CoreV1Api(admin).patch_node(node, {"metadata": {"labels": {NODE_LABEL: "elsewhere"}}})
    kubelet.wait_for_devices(RESOURCE, lambda ds: ds == [], 10)
    assert agent.registry.snapshot() == {}
    record_result("apiserver-unavailable-dp", device_kept=True, allocate_ok=True)
