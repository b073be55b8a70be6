"""Fault 2: the node agents SIGKILLed in the middle of Allocate / NodePrepareResources.

The kill lands exactly where it hurts, through the test-only crash points
(``QPU_K8S_FAULT_KILL_AT``, see ``qpu_k8s/core/faultpoints.py``):

* ``after-acquire``: the vendor opened the session, the token is in no checkpoint. qrmi
  cannot list a backend's sessions, so this token is lost for good: the agents report it
  (log + metric, with its bound) and the vendor closes it at the session's max TTL. The
  tests set a 3 s TTL and prove the session ends then, and that we never touch it.
* ``after-acquire-recorded``: the token is on disk, the kubelet had no answer: released
  once after the restart, 0 leaked.
* ``after-release``: the vendor closed the session, the checkpoint does not say so yet:
  the release is sent once more after the restart, to an already closed session (a no-op
  at the vendor), and never again. The claim's CDI spec was removed before the release:
  no container can start with a released token.

A restart also meets a vendor that fails: a release it owes is retried with backoff, across
further restarts, until the vendor confirms it.
"""

from __future__ import annotations

import time

import grpc
import pytest

from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    ClaimRef,
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
    PodAllocation,
)
from testsupport.deviceplugin import Layout, StartPlugin, all_healthy
from testsupport.dra import DraNode, StartDra
from testsupport.emulator import open_tokens, release_requests, session_of
from testsupport.faults import elapsed, ibm, record_result
from testsupport.names import DRIVER, RESOURCE
from testsupport.waiting import wait_for

TTL = 3  # seconds: the session max TTL of these tests' backends (qrmi's default is 28800)
TOKEN = "fake_manila_QRMI_JOB_ACQUISITION_TOKEN"
LOST_DP = "qpu_k8s_deviceplugin_acquisitions_lost_total"
LAST_LOSS_DP = "qpu_k8s_deviceplugin_acquisitions_lost_last_timestamp_seconds"
LOST_DRA = "qpu_k8s_dra_acquisitions_lost_total"
LAST_LOSS_DRA = "qpu_k8s_dra_acquisitions_lost_last_timestamp_seconds"


def pod(name: str, *devices: str) -> PodAllocation:
    return PodAllocation.with_devices(name, "team-a", RESOURCE, list(devices))


def allocate(kubelet: FakeDevicePluginKubelet, *devices: str) -> dict[str, str]:
    return dict(kubelet.allocate(RESOURCE, [list(devices)]).container_responses[0].envs)


def states(layout: Layout) -> list[tuple[str | None, AcqState]]:
    return [(a.token, a.state) for a in layout.acquisitions()]


def wait_closed(emu: Emulator, token: str, timeout: float) -> str:
    """Wait until the vendor closed ``token``'s session; returns who closed it."""
    assert emu.state.wait_until(lambda s: not session_of(emu, token).is_open, timeout), token
    closed_by = session_of(emu, token).closed_by
    assert closed_by is not None
    return closed_by


def registered_again(kubelet: FakeDevicePluginKubelet, count: int) -> None:
    """Wait for the ``count``-th registration and its healthy device list."""
    wait_for(lambda: len(kubelet.registrations) >= count, 20, f"registration #{count}")
    kubelet.wait_for_devices(RESOURCE, all_healthy, 20)


# -- device plugin ---------------------------------------------------------------------------
def test_dp_killed_between_vendor_acquire_and_checkpoint_reports_a_bounded_loss(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm(emu, "fake-manila", "fake_manila", max_ttl=TTL)])
    plugin = plugin_process(QPU_K8S_FAULT_KILL_AT="after-acquire")
    registered_again(kubelet, 1)
    with pytest.raises(grpc.RpcError):  # the kubelet sees the plugin die in Allocate
        allocate(kubelet, "fake-manila-lane-0")
    assert plugin.proc is not None
    assert plugin.proc.wait(timeout=10) == -9
    (lost,) = open_tokens(emu)  # the vendor did open a session...
    assert states(layout) == [(None, AcqState.ACQUIRING)]  # ...whose token nobody recorded

    started = time.monotonic()
    second = plugin_process()
    line = second.wait_log(
        "acquire was in flight when the plugin stopped: token unknown, the vendor session "
        "(if any) can only expire on its own"
    )
    assert line["held_at_most_seconds"] == str(TTL)
    assert second.metric(LOST_DP) == 1
    assert states(layout) == [(None, AcqState.LOST)]
    # The kubelet retries the pod's Allocate on the restarted plugin: a fresh session.
    registered_again(kubelet, 2)
    token = allocate(kubelet, "fake-manila-lane-0")[TOKEN]
    recovered = elapsed(started)
    pod_resources.set_pods([pod("job", "fake-manila-lane-0")])
    wait_for(lambda: (token, AcqState.BOUND) in states(layout), 10, "the new acquisition bound")
    pod_resources.set_pods([])
    assert wait_closed(emu, token, 10) == "release"
    assert release_requests(emu, token) == 1
    # The lost session ends at the vendor within its max TTL; we never sent it a release.
    assert wait_closed(emu, lost, TTL + 2) == "expired"
    assert release_requests(emu, lost) == 0
    assert open_tokens(emu) == set()
    # A crash loop: the process that found the loss dies; the next one shows when it
    # happened on its first scrape (its own counter starts from zero).
    when = second.metric(LAST_LOSS_DP)
    assert when > 0
    second.kill()
    third = plugin_process()
    assert (third.metric(LAST_LOSS_DP), third.metric(LOST_DP)) == (when, 0)
    record_result(
        "kill-dp-after-acquire",
        recovery_s=recovered,
        lost=1,
        lost_bound_s=TTL,
        leaked_after_bound=0,
        double_releases=0,
    )


def test_dp_killed_in_a_two_backend_allocate_keeps_the_first_token(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    """The first acquisition's token is on disk before the second acquire starts."""
    layout.write_config(
        [
            ibm(emu, "fake-manila", "fake_manila", max_ttl=TTL),
            ibm(emu, "fake-nairobi", "fake_nairobi", max_ttl=TTL),
        ]
    )
    plugin = plugin_process(QPU_K8S_FAULT_KILL_AT="after-acquire@2")
    registered_again(kubelet, 1)
    with pytest.raises(grpc.RpcError):
        allocate(kubelet, "fake-manila-lane-0", "fake-nairobi-lane-0")
    assert plugin.proc is not None
    assert plugin.proc.wait(timeout=10) == -9
    first = next(t for t, s in states(layout) if t is not None)
    assert {s for _, s in states(layout)} == {AcqState.ALLOCATED, AcqState.ACQUIRING}
    (lost,) = open_tokens(emu) - {first}

    plugin_process()
    # No container ever got the recorded one: it is released after the grace, once.
    assert wait_closed(emu, first, 10) == "release"
    assert wait_closed(emu, lost, TTL + 2) == "expired"
    wait_for(lambda: release_requests(emu, first) == 1, 5, "one release of the recorded token")
    assert release_requests(emu, lost) == 0
    assert sorted(s.value for _, s in states(layout)) == ["lost", "released"]
    record_result("kill-dp-after-acquire-2nd", lost=1, lost_bound_s=TTL, double_releases=0)


def test_dp_killed_after_the_token_is_recorded_releases_it_once(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm(emu, "fake-manila", "fake_manila")])
    plugin = plugin_process(QPU_K8S_FAULT_KILL_AT="after-acquire-recorded")
    registered_again(kubelet, 1)
    with pytest.raises(grpc.RpcError):
        allocate(kubelet, "fake-manila-lane-0")
    assert plugin.proc is not None
    assert plugin.proc.wait(timeout=10) == -9
    ((orphan, state),) = states(layout)
    assert orphan is not None
    assert state is AcqState.ALLOCATED

    started = time.monotonic()
    plugin_process()
    registered_again(kubelet, 2)
    token = allocate(kubelet, "fake-manila-lane-0")[TOKEN]  # the kubelet's retry
    pod_resources.set_pods([pod("job", "fake-manila-lane-0")])
    # The orphan is superseded by the retry of the same devices and released, once.
    assert wait_closed(emu, orphan, 10) == "release"
    recovered = elapsed(started)
    wait_for(lambda: (token, AcqState.BOUND) in states(layout), 10, "the retry bound")
    assert session_of(emu, token).is_open
    pod_resources.set_pods([])
    assert wait_closed(emu, token, 10) == "release"
    assert (release_requests(emu, orphan), release_requests(emu, token)) == (1, 1)
    assert open_tokens(emu) == set()
    record_result("kill-dp-after-record", recovery_s=recovered, leaked=0, double_releases=0)


def test_dp_killed_after_the_vendor_released_repeats_only_a_no_op(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm(emu, "fake-manila", "fake_manila")])
    plugin = plugin_process(QPU_K8S_FAULT_KILL_AT="after-release")
    registered_again(kubelet, 1)
    token = allocate(kubelet, "fake-manila-lane-0")[TOKEN]
    pod_resources.set_pods([pod("job", "fake-manila-lane-0")])
    wait_for(lambda: states(layout) == [(token, AcqState.BOUND)], 10, "bound")
    pod_resources.set_pods([])  # the pod ends: the plugin releases and dies right after
    assert plugin.proc is not None
    assert plugin.proc.wait(timeout=15) == -9
    assert wait_closed(emu, token, 1) == "release"
    assert states(layout) == [(token, AcqState.RELEASING)]

    started = time.monotonic()
    second = plugin_process()
    wait_for(lambda: states(layout) == [(token, AcqState.RELEASED)], 15, "released recorded")
    recovered = elapsed(started)
    # One repeat, to the session the vendor had already closed (it answers a no-op)...
    assert release_requests(emu, token) == 2
    assert session_of(emu, token).closed_by == "release"
    # ...and never again, also after one more restart.
    second.kill()
    third = plugin_process()
    third.wait_log("registered with the kubelet")
    calls = pod_resources.calls("List")
    wait_for(lambda: pod_resources.calls("List") >= calls + 5, 10, "more reconciles")
    assert release_requests(emu, token) == 2
    record_result(
        "kill-dp-after-release",
        recovery_s=recovered,
        leaked=0,
        double_releases=0,
        repeated_noop_requests=1,
    )


# -- DRA driver ------------------------------------------------------------------------------
def _prepare(kubelet: FakeDRAKubelet, ref: ClaimRef) -> tuple[str, str]:
    """(CDI device ID, error) of one claim."""
    out = kubelet.node_prepare_resources([ref])[ref.uid]
    return (out.devices[0].cdi_device_ids[0] if out.devices else "", out.error)


def _ref(claim: tuple[str, str, str]) -> ClaimRef:
    return ClaimRef(*claim)


def test_dra_killed_between_vendor_acquire_and_checkpoint_reports_a_bounded_loss(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends(
        [ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, max_ttl=TTL)]
    )
    driver = dra_process(QPU_K8S_FAULT_KILL_AT="after-acquire")
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    ref = _ref(dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    with pytest.raises(grpc.RpcError):
        _prepare(dra_kubelet, ref)
    assert driver.wait_exit() == -9
    (lost,) = open_tokens(emu)
    rec = dra_node.checkpoint()["claims"][ref.uid]
    assert rec["phase"] == "preparing"
    assert rec["devices"][0]["token"] is None

    started = time.monotonic()
    second = dra_process()
    assert second.started()["half_prepared"] == 1
    line = second.wait_log(
        "acquire may have been in flight when the driver stopped: token unknown, the vendor "
        "session (if any) can only expire on its own"
    )
    assert line["held_at_most_seconds"] == str(TTL)
    assert second.metric(LOST_DRA) == 1
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    _, error = _prepare(dra_kubelet, ref)  # the kubelet's retry
    recovered = elapsed(started)
    assert error == ""
    token = dra_node.cdi_env(ref.uid)[TOKEN]
    assert dra_kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert wait_closed(emu, token, 5) == "release"
    assert release_requests(emu, token) == 1
    assert wait_closed(emu, lost, TTL + 2) == "expired"
    assert release_requests(emu, lost) == 0
    assert open_tokens(emu) == set()
    when = second.metric(LAST_LOSS_DRA)  # a crash loop, as in the device plugin's test
    assert when > 0
    second.stop()
    third = dra_process()
    assert (third.metric(LAST_LOSS_DRA), third.metric(LOST_DRA)) == (when, 0)
    record_result(
        "kill-dra-after-acquire",
        recovery_s=recovered,
        lost=1,
        lost_bound_s=TTL,
        leaked_after_bound=0,
        double_releases=0,
    )


def test_dra_killed_after_the_token_is_recorded_releases_it_once(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name)])
    driver = dra_process(QPU_K8S_FAULT_KILL_AT="after-acquire-recorded")
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    ref = _ref(dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    with pytest.raises(grpc.RpcError):
        _prepare(dra_kubelet, ref)
    assert driver.wait_exit() == -9
    (orphan,) = open_tokens(emu)

    started = time.monotonic()
    second = dra_process()
    assert second.started()["half_prepared"] == 1
    assert wait_closed(emu, orphan, 5) == "release"
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    _, error = _prepare(dra_kubelet, ref)
    recovered = elapsed(started)
    assert error == ""
    token = dra_node.cdi_env(ref.uid)[TOKEN]
    assert token != orphan
    assert second.metric(LOST_DRA) == 0
    assert dra_kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert wait_closed(emu, token, 5) == "release"
    assert (release_requests(emu, orphan), release_requests(emu, token)) == (1, 1)
    assert open_tokens(emu) == set()
    record_result("kill-dra-after-record", recovery_s=recovered, leaked=0, double_releases=0)


def test_dra_killed_after_the_vendor_released_repeats_only_a_no_op(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name)])
    driver = dra_process(QPU_K8S_FAULT_KILL_AT="after-release")
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    ref = _ref(dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    _, error = _prepare(dra_kubelet, ref)
    assert error == ""
    token = dra_node.cdi_env(ref.uid)[TOKEN]
    with pytest.raises(grpc.RpcError):
        dra_kubelet.node_unprepare_resources([ref])
    assert driver.wait_exit() == -9
    assert wait_closed(emu, token, 1) == "release"
    assert dra_node.checkpoint()["claims"][ref.uid]["devices"][0]["released"] is False

    started = time.monotonic()
    second = dra_process()
    second.started()
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    assert dra_kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}  # the kubelet's retry
    recovered = elapsed(started)
    assert release_requests(emu, token) == 2  # one repeat, to the already closed session
    assert dra_kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert release_requests(emu, token) == 2  # and never again
    assert dra_node.checkpoint()["claims"] == {}
    assert len(emu.state.sessions()) == 1
    record_result(
        "kill-dra-after-release",
        recovery_s=recovered,
        leaked=0,
        double_releases=0,
        repeated_noop_requests=1,
    )


def _failed_releases(emu: Emulator, token: str) -> int:
    return sum(
        1
        for r in emu.state.requests(path_contains=f"/sessions/{token}")
        if r.method in ("PATCH", "DELETE") and r.status >= 500
    )


def test_dra_owes_a_release_across_restarts_until_the_vendor_confirms_it(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    """Issue 17.1: killed with a token recorded, restarted while the vendor answers 503,
    killed again: the release is owed, not given up, and lands once when the vendor is back."""
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name)])
    driver = dra_process(QPU_K8S_FAULT_KILL_AT="after-acquire-recorded")
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    ref = _ref(dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    with pytest.raises(grpc.RpcError):
        _prepare(dra_kubelet, ref)
    assert driver.wait_exit() == -9
    (orphan,) = open_tokens(emu)

    emu.set_fault("error5xx", "fake_manila")
    started = time.monotonic()
    try:
        second = dra_process()
        assert second.started()["half_prepared"] == 1
        wait_for(lambda: _failed_releases(emu, orphan) >= 2, 10, "two failed releases")
        (owed,) = dra_node.checkpoint()["owed"].values()
        assert (owed["token"], owed["attempts"] >= 1) == (orphan, True)
        second.stop()  # SIGKILL with the release still owed
        third = dra_process()
        third.started()
        failed = _failed_releases(emu, orphan)
        wait_for(lambda: _failed_releases(emu, orphan) > failed, 15, "a retry after restart")
        assert session_of(emu, orphan).is_open
    finally:
        emu.clear_faults()
    assert wait_closed(emu, orphan, 20) == "release"
    recovered = elapsed(started)
    assert release_requests(emu, orphan) == 1  # exactly one that succeeded
    wait_for(lambda: dra_node.checkpoint()["owed"] == {}, 10, "the debt paid")
    assert open_tokens(emu) == set()
    record_result(
        "dra-release-owed-across-restarts",
        closed_after_s=recovered,
        failed_attempts=_failed_releases(emu, orphan),
        leaked=0,
        double_releases=0,
    )


def test_dra_killed_mid_unprepare_never_serves_a_released_token(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    """Issue 17.3: killed after the vendor released, before the record said so: no CDI spec
    holds the released token, after the kill nor after the restart, and a prepare of the
    same claim in that gap gets a live session."""
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name)])
    driver = dra_process(QPU_K8S_FAULT_KILL_AT="after-release")
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    ref = _ref(dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    assert _prepare(dra_kubelet, ref)[1] == ""
    released = dra_node.cdi_env(ref.uid)[TOKEN]
    with pytest.raises(grpc.RpcError):
        dra_kubelet.node_unprepare_resources([ref])
    assert driver.wait_exit() == -9
    assert wait_closed(emu, released, 1) == "release"
    assert list(dra_node.cdi_dir.iterdir()) == []  # removed before the release was sent

    second = dra_process()
    assert second.started()["unpreparing"] == 1
    assert second.started()["cdi_rewritten"] == 0
    assert list(dra_node.cdi_dir.iterdir()) == []
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    assert _prepare(dra_kubelet, ref)[1] == ""  # a prepare in the gap
    live = dra_node.cdi_env(ref.uid)[TOKEN]
    assert live != released
    assert session_of(emu, live).is_open
    assert dra_kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert wait_closed(emu, live, 5) == "release"
    assert list(dra_node.cdi_dir.iterdir()) == []
    assert open_tokens(emu) == set()
    record_result("kill-dra-mid-unprepare", stale_cdi_specs=0, leaked=0)
