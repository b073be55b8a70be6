"""Faults 1 and 3: the kubelet restarts (its sockets and device-plugin dir wiped) while pods
hold QPUs, and the node reboots (new boot ID, CDI tmpfs empty, agents and kubelet restart).

Both agents run as real processes. Measured: re-registration time after a kubelet restart,
and the time until a reboot's stale state is cleaned; asserted: no acquisition lost,
duplicated, leaked or released twice.
"""

from __future__ import annotations

import statistics
import time

from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    ClaimRef,
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
    PodAllocation,
)
from testsupport.deviceplugin import Layout, StartPlugin, all_healthy, more_lists
from testsupport.dra import DraNode, StartDra
from testsupport.emulator import open_tokens, release_requests, session_of
from testsupport.faults import elapsed, ibm, record_result
from testsupport.names import DRIVER, RESOURCE
from testsupport.waiting import wait_for

TOKEN = "fake_manila_QRMI_JOB_ACQUISITION_TOKEN"


def pod(name: str, device: str) -> PodAllocation:
    return PodAllocation.with_devices(name, "team-a", RESOURCE, [device])


def live(layout: Layout) -> dict[str, AcqState]:
    return {a.token: a.state for a in layout.acquisitions() if a.token}


def test_kubelet_restarts_device_plugin_reregisters_and_keeps_every_acquisition(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm(emu, "fake-manila", "fake_manila", lanes=3)])
    plugin = plugin_process("--kubelet-restart-hold", "1")
    kubelet.wait_for_devices(RESOURCE, all_healthy, 20)
    tokens = {}
    for lane in (0, 1):
        dev = f"fake-manila-lane-{lane}"
        tokens[dev] = dict(kubelet.allocate(RESOURCE, [[dev]]).container_responses[0].envs)[TOKEN]
    pods = [pod(f"p{i}", dev) for i, dev in enumerate(tokens)]
    pod_resources.set_pods(pods)
    bound = {t: AcqState.BOUND for t in tokens.values()}
    wait_for(lambda: live(layout) == bound, 10, "both bound")

    took = []
    for _ in range(3):
        pod_resources.set_pods([])  # a restarting kubelet lists no pods until it has synced
        start = time.monotonic()
        kubelet.restart()  # stops, wipes the directory (our socket too), serves a new one
        kubelet.wait_for_registration(timeout=5)
        kubelet.wait_for_devices(RESOURCE, all_healthy, 5)
        took.append(time.monotonic() - start)
        more_lists(pod_resources, 3)
        pod_resources.set_pods(pods)  # synced: the pods are still running
        more_lists(pod_resources)
        assert live(layout) == bound  # nothing released, lost or duplicated
    assert max(took) < 2.0, f"re-registration took {took}"
    assert open_tokens(emu) == set(tokens.values())
    assert len(emu.state.sessions()) == 2
    assert plugin.metric("qpu_k8s_deviceplugin_registrations_total") == 4
    # The node keeps working, and every acquisition ends exactly once.
    extra = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-2"]]).container_responses[0].envs)
    pod_resources.set_pods([*pods, pod("p2", "fake-manila-lane-2")])
    wait_for(lambda: live(layout).get(extra[TOKEN]) is AcqState.BOUND, 10, "third bound")
    pod_resources.set_pods([])
    assert emu.state.wait_until(lambda s: not s.open_sessions(), 10)
    more_lists(pod_resources)
    for session in emu.state.sessions():
        assert release_requests(emu, session.id) == 1
    record_result(
        "kubelet-restart-dp",
        reregistration_p50_s=round(statistics.median(took), 3),
        reregistration_max_s=round(max(took), 3),
        lost=0,
        duplicated=0,
        leaked=0,
        double_releases=0,
    )


def test_kubelet_restarts_dra_driver_reregisters_and_keeps_prepared_claims(
    emu: Emulator, dra_node: DraNode, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name)])
    dra_process()
    kubelet = FakeDRAKubelet(dra_node.registry_dir)
    kubelet.start()
    try:
        kubelet.wait_for_registration(DRIVER, timeout=20)
        ref = ClaimRef(*dra_node.claim([("qpu", "ibm-manila-lane-0")]))
        first = kubelet.node_prepare_resources([ref])[ref.uid]
        assert first.error == ""
        token = dra_node.cdi_env(ref.uid)[TOKEN]
        took = []
        for _ in range(3):
            kubelet.stop()
            start = time.monotonic()
            kubelet = FakeDRAKubelet(dra_node.registry_dir)  # a new kubelet process
            kubelet.start()
            kubelet.wait_for_registration(DRIVER, timeout=5)
            took.append(time.monotonic() - start)
            # The restarted kubelet prepares the running pod's claim again: same answer.
            assert kubelet.node_prepare_resources([ref])[ref.uid] == first
            assert kubelet.watch_health().wait_for(timeout=5)
        assert max(took) < 2.0, f"re-registration took {took}"
        assert [s.id for s in emu.state.sessions()] == [token]
        assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    finally:
        kubelet.stop()
    assert open_tokens(emu) == set()
    assert release_requests(emu, token) == 1
    record_result(
        "kubelet-restart-dra",
        reregistration_p50_s=round(statistics.median(took), 3),
        reregistration_max_s=round(max(took), 3),
        lost=0,
        duplicated=0,
        leaked=0,
        double_releases=0,
    )


def test_node_reboot_device_plugin_keeps_pods_that_came_back_and_releases_the_rest(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    """After a reboot the kubelet restarts the pods it still has from its own checkpoint
    (the Allocate answers, tokens included): those acquisitions must stay; a pod deleted
    while the node was down never comes back, and its acquisition is released once."""
    layout.write_config([ibm(emu, "fake-manila", "fake_manila", lanes=2)])
    plugin = plugin_process("--kubelet-restart-hold", "1")
    kubelet.wait_for_devices(RESOURCE, all_healthy, 20)
    keep = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs)
    gone = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-1"]]).container_responses[0].envs)
    pods = [pod("stays", "fake-manila-lane-0"), pod("deleted", "fake-manila-lane-1")]
    pod_resources.set_pods(pods)
    wait_for(lambda: set(live(layout).values()) == {AcqState.BOUND}, 10, "bound")

    # Power off: the plugin dies with the node, the kubelet goes away.
    plugin.kill()
    kubelet.stop()
    pod_resources.set_pods([])
    # Power on: the kubelet starts (wiping its directory) and lists no pods for a while.
    kubelet.restart()
    start = time.monotonic()
    plugin_process("--kubelet-restart-hold", "1")
    kubelet.wait_for_registration(timeout=20)
    kubelet.wait_for_devices(RESOURCE, all_healthy, 20)
    more_lists(pod_resources, 3)
    assert open_tokens(emu) == {keep[TOKEN], gone[TOKEN]}  # nothing decided while unsynced
    pod_resources.set_pods(pods[:1])  # synced: only the surviving pod runs again
    assert emu.state.wait_until(lambda s: not session_of(emu, gone[TOKEN]).is_open, 10)
    cleaned = elapsed(start)
    more_lists(pod_resources)
    assert live(layout) == {keep[TOKEN]: AcqState.BOUND, gone[TOKEN]: AcqState.RELEASED}
    assert open_tokens(emu) == {keep[TOKEN]}
    assert release_requests(emu, gone[TOKEN]) == 1
    assert len(emu.state.sessions()) == 2  # no acquisition was duplicated
    record_result("reboot-dp", stale_cleaned_s=cleaned, restored=1, leaked=0, double_releases=0)


def test_node_reboot_dra_driver_cleans_the_old_boot_and_prepares_again(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, lanes=3)])
    driver = dra_process()
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    claims = {
        what: ClaimRef(*dra_node.claim([("qpu", f"ibm-manila-lane-{lane}")]))
        for lane, what in enumerate(("running", "deleted", "shrunk"))
    }
    old = {}
    for what, ref in claims.items():
        assert dra_kubelet.node_prepare_resources([ref])[ref.uid].error == ""
        old[what] = dra_node.cdi_env(ref.uid)[TOKEN]

    # Reboot: the driver dies, the CDI tmpfs is empty, a new boot ID, and the backend lost
    # a lane meanwhile (its config changed while the node was down).
    driver.stop()
    for spec in dra_node.cdi_dir.iterdir():
        spec.unlink()
    dra_node.reboot()
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, lanes=2)])
    start = time.monotonic()
    second = dra_process()
    assert second.started()["stale_boot"] == 3
    cleaned = elapsed(start)
    assert open_tokens(emu) == set()  # every old-boot acquisition released...
    assert all(release_requests(emu, t) == 1 for t in old.values())  # ...once
    assert dra_node.checkpoint()["claims"] == {}
    assert list(dra_node.cdi_dir.iterdir()) == []
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    # The kubelet prepares the claims of the pods it restarts: a running pod gets a fresh
    # acquisition and CDI spec; a claim the node can no longer serve fails, saying why.
    running = dra_kubelet.node_prepare_resources([claims["running"]])[claims["running"].uid]
    assert running.error == ""
    new_token = dra_node.cdi_env(claims["running"].uid)[TOKEN]
    assert new_token not in old.values()
    shrunk = dra_kubelet.node_prepare_resources([claims["shrunk"]])[claims["shrunk"].uid]
    assert "device ibm-manila-lane-2: backend 'ibm-manila' has 2 lanes" in shrunk.error
    assert open_tokens(emu) == {new_token}
    assert dra_kubelet.node_unprepare_resources([claims["running"]]) == {claims["running"].uid: ""}
    assert open_tokens(emu) == set()
    record_result(
        "reboot-dra",
        stale_cleaned_s=cleaned,
        stale_released=3,
        restored=1,
        failed_clearly=1,
        leaked=0,
        double_releases=0,
    )
