"""Fault 4: the vendor hangs (accepts, never answers) or answers 5xx to everything.

Both agents run as real processes against the emulator. Every kubelet call returns within
its deadline, devices go Unhealthy (ListAndWatch; the DRA health stream), releases that
could not reach the vendor are retried and done once when it is back, an acquire the vendor
answers after its deadline is released at once, and health recovers with the vendor.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from qpu_k8s.core.model import parse_backend
from qpu_k8s.core.qrmi_client import MAX_STUCK_CALLS, CallTimeouts, QrmiClient
from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    ClaimRef,
    DeviceState,
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
    PodAllocation,
)
from qpu_k8s.fakekubelet.dra import DeviceHealthState
from testsupport.deviceplugin import Layout, StartPlugin, all_healthy
from testsupport.dra import DraNode, StartDra
from testsupport.emulator import IBM_KEY, open_tokens, release_requests, session_of
from testsupport.faults import PROBE_INTERVAL, elapsed, ibm, record_result
from testsupport.names import DRIVER, RESOURCE
from testsupport.waiting import wait_for

TOKEN = "fake_manila_QRMI_JOB_ACQUISITION_TOKEN"


def none_healthy(ds: list[DeviceState]) -> bool:
    return bool(ds) and not any(d.healthy for d in ds)


def health_is(status: str) -> Callable[[dict[tuple[str, str], DeviceHealthState]], bool]:
    return lambda devs: bool(devs) and all(d.health == status for d in devs.values())


def timed(fn: Callable[[], object]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def test_vendor_hang_device_plugin(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm(emu, "fake-manila", "fake_manila", lanes=2)])
    plugin = plugin_process("--probe-timeout", "1", "--acquire-timeout", "2")
    kubelet.wait_for_devices(RESOURCE, all_healthy, 20)
    envs = kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs
    held = dict(envs)[TOKEN]
    pod_resources.set_pods(
        [PodAllocation.with_devices("a", "ns", RESOURCE, ["fake-manila-lane-0"])]
    )
    wait_for(lambda: (held, AcqState.BOUND) in [(a.token, a.state) for a in layout.acquisitions()],
             10, "bound")  # fmt: skip

    emu.set_fault("hang", "fake_manila")
    hung_at = time.monotonic()
    took, err = timed(lambda: kubelet.allocate(RESOURCE, [["fake-manila-lane-1"]]))
    assert isinstance(err, grpc.RpcError)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert "no answer within 2s" in str(err.details())
    assert took < 2.5, f"Allocate took {took:.2f}s with a 2 s deadline"
    kubelet.wait_for_devices(RESOURCE, none_healthy, 5)  # the probe after the failed acquire
    unhealthy_after = elapsed(hung_at)
    # Calls that need no vendor stay fast while it hangs.
    fast, err = timed(lambda: kubelet.get_preferred_allocation(RESOURCE, ["fake-manila-lane-1"], 1))
    assert err is None
    assert fast < 0.5
    pod_resources.set_pods([])  # the pod ends during the hang: its release cannot go through
    plugin.wait_log("release is taking long; its answer will be recorded when it comes")
    calls = pod_resources.calls("List")
    wait_for(lambda: pod_resources.calls("List") >= calls + 10, 10, "reconciles during the hang")
    assert session_of(emu, held).is_open

    emu.clear_faults()
    cleared = time.monotonic()
    kubelet.wait_for_devices(RESOURCE, all_healthy, PROBE_INTERVAL + 3)
    recovered = elapsed(cleared)
    # The held session's release and the late acquire's session both end, once each.
    assert emu.state.wait_until(lambda s: not s.open_sessions(), 10), open_tokens(emu)
    assert {s.closed_by for s in emu.state.sessions()} == {"release"}
    ids = [s.id for s in emu.state.sessions()]
    wait_for(lambda: all(release_requests(emu, i) == 1 for i in ids), 5, "one release each")
    wait_for(
        lambda: {a.state for a in layout.acquisitions()} <= {AcqState.RELEASED, AcqState.LOST},
        10,
        "every acquisition ended",
    )
    record_result(
        "vendor-hang-dp",
        allocate_returned_s=round(took, 3),
        unhealthy_after_s=unhealthy_after,
        recovery_s=recovered,
        leaked=0,
        double_releases=0,
        sessions=len(emu.state.sessions()),
    )


def test_vendor_hang_dra_driver(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, lanes=2)])
    dra_process(probe_timeout=1.0, acquire_timeout=1.0)
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    watch = dra_kubelet.watch_health("v1alpha1")
    watch.wait_for(health_is("HEALTHY"), 15)
    before = ClaimRef(*dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    assert dra_kubelet.node_prepare_resources([before])[before.uid].error == ""
    held = dra_node.cdi_env(before.uid)[TOKEN]

    emu.set_fault("hang", "fake_manila")
    hung_at = time.monotonic()
    during = ClaimRef(*dra_node.claim([("qpu", "ibm-manila-lane-1")]))
    start = time.monotonic()
    error = dra_kubelet.node_prepare_resources([during])[during.uid].error
    took = time.monotonic() - start
    assert "no answer within 1s" in error
    assert took < 1.5, f"NodePrepareResources took {took:.2f}s with a 1 s deadline"
    watch.wait_for(health_is("UNHEALTHY"), 5)
    unhealthy_after = elapsed(hung_at)
    start = time.monotonic()
    error = dra_kubelet.node_unprepare_resources([before])[before.uid]
    assert "release on backend 'ibm-manila' failed" in error  # the kubelet retries it
    assert time.monotonic() - start < 1.5
    assert session_of(emu, held).is_open

    emu.clear_faults()
    cleared = time.monotonic()
    watch.wait_for(health_is("HEALTHY"), PROBE_INTERVAL + 3)
    recovered = elapsed(cleared)
    # The prepare that timed out: the vendor opened its session when the hang ended, and
    # the driver released it at once (nobody was given that token).
    late = emu.state.wait_until(lambda s: len(s.sessions()) == 2, 5)
    assert late, "the hung acquire never reached the vendor"
    (late_id,) = {s.id for s in emu.state.sessions()} - {held}
    assert emu.state.wait_until(lambda s: not session_of(emu, late_id).is_open, 5)
    assert dra_kubelet.node_unprepare_resources([before]) == {before.uid: ""}
    assert not session_of(emu, held).is_open
    assert open_tokens(emu) == set()
    assert (release_requests(emu, held), release_requests(emu, late_id)) == (1, 1)
    assert dra_node.checkpoint()["claims"] == {}
    record_result(
        "vendor-hang-dra",
        prepare_returned_s=round(took, 3),
        unhealthy_after_s=unhealthy_after,
        recovery_s=recovered,
        leaked=0,
        double_releases=0,
    )


def test_vendor_5xx_storm_both_agents(  # noqa: PLR0917
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
    dra_node: DraNode,
    dra_kubelet: FakeDRAKubelet,
    dra_process: StartDra,
) -> None:
    layout.write_config([ibm(emu, "fake-manila", "fake_manila", lanes=2)])
    dra_node.write_backends([ibm(emu, "ibm-nairobi", "fake_nairobi", node=dra_node.name)])
    plugin = plugin_process("--probe-timeout", "1", "--acquire-timeout", "2")
    dra_process(probe_timeout=1.0, acquire_timeout=2.0)
    kubelet.wait_for_devices(RESOURCE, all_healthy, 20)
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    watch = dra_kubelet.watch_health("v1")
    watch.wait_for(health_is("HEALTHY"), 15)
    dp_token = dict(
        kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs
    )[TOKEN]
    pod_resources.set_pods(
        [PodAllocation.with_devices("a", "ns", RESOURCE, ["fake-manila-lane-0"])]
    )
    claim = ClaimRef(*dra_node.claim([("qpu", "ibm-nairobi-lane-0")]))
    assert dra_kubelet.node_prepare_resources([claim])[claim.uid].error == ""
    dra_token = dra_node.cdi_env(claim.uid)["fake_nairobi_QRMI_JOB_ACQUISITION_TOKEN"]

    emu.set_fault("error5xx", status=503)  # every vendor request, IAM included
    storm = time.monotonic()
    took, err = timed(lambda: kubelet.allocate(RESOURCE, [["fake-manila-lane-1"]]))
    assert isinstance(err, grpc.RpcError)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert took < 2.0
    other = ClaimRef(*dra_node.claim([("qpu", "ibm-nairobi-lane-0")]))
    result = dra_kubelet.node_prepare_resources([other])[other.uid]
    assert result.error
    assert not result.devices
    kubelet.wait_for_devices(RESOURCE, none_healthy, 5)
    watch.wait_for(health_is("UNHEALTHY"), PROBE_INTERVAL + 3)
    unhealthy_after = elapsed(storm)
    pod_resources.set_pods([])  # releases fail during the storm and are retried
    assert dra_kubelet.node_unprepare_resources([claim])[claim.uid] != ""
    wait_for(
        lambda: (
            plugin.metric("qpu_k8s_deviceplugin_releases_total", {"result": "unavailable"}) >= 2
        ),
        10,
        "two failed release attempts",
    )
    assert session_of(emu, dp_token).is_open
    assert session_of(emu, dra_token).is_open

    emu.clear_faults()
    cleared = time.monotonic()
    assert dra_kubelet.node_unprepare_resources([claim]) == {claim.uid: ""}  # kubelet retry
    assert emu.state.wait_until(lambda s: not session_of(emu, dp_token).is_open, 10)
    released_after = elapsed(cleared)
    kubelet.wait_for_devices(RESOURCE, all_healthy, PROBE_INTERVAL + 3)
    watch.wait_for(health_is("HEALTHY"), PROBE_INTERVAL + 3)
    recovered = elapsed(cleared)
    assert open_tokens(emu) == set()
    assert (release_requests(emu, dp_token), release_requests(emu, dra_token)) == (1, 1)
    assert plugin.metric("qpu_k8s_deviceplugin_releases_total", {"result": "ok"}) == 1
    record_result(
        "vendor-5xx-storm",
        allocate_returned_s=round(took, 3),
        unhealthy_after_s=unhealthy_after,
        released_after_s=released_after,
        recovery_s=recovered,
        leaked=0,
        double_releases=0,
    )


def _threads() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_a_long_hang_does_not_pile_up_stuck_calls(emu: Emulator) -> None:
    """qrmi has no client timeout: a call that missed our deadline keeps its thread (and
    its qrmi object's runtime) until the vendor answers. Probing a hung vendor every
    interval must not stack those up without bound."""
    backend = parse_backend(ibm(emu, "manila", "fake_manila"))
    client = QrmiClient(
        backend, {"QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY}, timeouts=CallTimeouts.uniform(0.2)
    )
    assert client.health().healthy
    emu.set_fault("hang", "fake_manila")
    before = _threads()
    answers = [client.health() for _ in range(3 * MAX_STUCK_CALLS)]
    assert {(h.healthy, h.status) for h in answers} == {(False, "timeout")}
    assert client.stuck_calls == MAX_STUCK_CALLS
    assert "still unanswered" in answers[-1].reason
    grown = _threads() - before
    assert grown <= 3 * MAX_STUCK_CALLS, f"{grown} threads for {MAX_STUCK_CALLS} stuck calls"
    emu.clear_faults()
    wait_for(lambda: client.stuck_calls == 0, 5, "the stuck calls to return")
    # Only the calls that were let through reached the vendor.
    statuses = [r for r in emu.state.requests("/api/v1/backends") if r.path == "/api/v1/backends"]
    assert len(statuses) == 1 + MAX_STUCK_CALLS  # qrmi's status() lists the backends
    # The vendor answers again. The stuck calls' objects were dropped, so the next probe
    # builds a new qrmi object and fetches a vendor token first: on a loaded machine that
    # can take longer than this test's 0.2 s deadline, hence a condition, not one call.
    wait_for(lambda: client.health().healthy, 10, "a healthy probe once the vendor answers")
    record_result(
        "vendor-hang-stuck-calls", probes=len(answers), stuck=MAX_STUCK_CALLS, threads_grown=grown
    )
