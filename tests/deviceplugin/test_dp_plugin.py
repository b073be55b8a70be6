"""The agent in-process against the fake kubelet and the emulator (real qrmi, real sockets)."""

from __future__ import annotations

import stat
import time

import grpc
import pytest

from qpu_k8s.deviceplugin.agent import DevicePlugin
from qpu_k8s.deviceplugin.state import HOLDING, AcqState
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    DeviceState,
    FakeDevicePluginKubelet,
    FakePodResourcesServer,
    PluginOptions,
    PodAllocation,
)
from testsupport.deviceplugin import Layout, StartAgent
from testsupport.emulator import ibm_backend, pasqal_backend, release_requests, session_of
from testsupport.names import RESOURCE
from testsupport.waiting import wait_for


def manila_and_fresnel(emu: Emulator, layout: Layout, **manila: object) -> None:
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila", lanes=2, **manila),
            pasqal_backend(emu, "fresnel", "FRESNEL", lanes=3),
        ]
    )


def healthy_of(devs: list[DeviceState], prefix: str) -> set[bool]:
    return {d.healthy for d in devs if d.id.startswith(prefix)}


def only_acquisition(agent: DevicePlugin) -> str:
    (acq,) = agent.ledger.snapshot()
    return acq.id


# -- registration and devices ---------------------------------------------------------------


def test_registers_v1beta1_with_its_options_after_serving(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    manila_and_fresnel(emu, layout)
    agent = start_agent()
    reg = kubelet.wait_for_registration()
    assert reg.version == "v1beta1"
    assert reg.resource_name == RESOURCE
    assert reg.endpoint == "qpu-k8s-quantum.example.com_qpu.sock"
    # Preferred allocation on (we spread over backends), pre-start off (nothing to do there).
    assert reg.options == PluginOptions(
        pre_start_required=False, get_preferred_allocation_available=True
    )
    assert kubelet.options(RESOURCE) == reg.options  # GetDevicePluginOptions agrees
    sock = layout.dp_dir / reg.endpoint
    assert stat.S_ISSOCK(sock.stat().st_mode)
    kubelet.pre_start_container(RESOURCE, ["fake-manila-lane-0"])  # answered, no-op
    assert agent.registrar.registrations == 1


def test_one_device_per_lane_node_bound_only_where_labels_match(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila", lanes=2),
            pasqal_backend(emu, "fresnel", "FRESNEL", lanes=3),
            ibm_backend(
                emu, "onprem", "fake_nairobi", access="node-bound", nodeSelector={"lab": "zurich"}
            ),
            ibm_backend(
                emu, "remote", "fake_lagos", access="node-bound", nodeSelector={"lab": "paris"}
            ),
        ]
    )
    start_agent(node_labels={"lab": "zurich"})
    devs = kubelet.wait_for_devices(
        RESOURCE, lambda ds: len(ds) == 6 and all(d.healthy for d in ds)
    )
    assert sorted(d.id for d in devs) == [
        "fake-manila-lane-0",
        "fake-manila-lane-1",
        "fresnel-lane-0",
        "fresnel-lane-1",
        "fresnel-lane-2",
        "onprem-lane-0",
    ]


def test_shared_backends_can_be_left_out(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila"),
            ibm_backend(
                emu, "onprem", "fake_nairobi", access="node-bound", nodeSelector={"lab": "zurich"}
            ),
        ]
    )
    start_agent(node_labels={"lab": "zurich"}, include_shared=False)
    assert [d.id for d in kubelet.devices(RESOURCE)] == ["onprem-lane-0"]


def test_health_flips_both_ways_within_a_second_of_the_probe(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    manila_and_fresnel(emu, layout)
    agent = start_agent()
    emu.set_online("fake_manila", False, reason="calibration")
    agent.registry.probe_now("fake-manila")
    probed = time.monotonic()
    devs = kubelet.wait_for_devices(
        RESOURCE, lambda ds: healthy_of(ds, "fake-manila") == {False}, timeout=1.0
    )
    assert time.monotonic() - probed < 1.0
    assert healthy_of(devs, "fresnel") == {True}  # the other backend is untouched
    emu.set_online("fake_manila", True)
    agent.registry.probe_now("fake-manila")
    probed = time.monotonic()
    kubelet.wait_for_devices(
        RESOURCE, lambda ds: healthy_of(ds, "fake-manila") == {True}, timeout=1.0
    )
    assert time.monotonic() - probed < 1.0


def test_scheduled_probe_pushes_the_change_at_once(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    manila_and_fresnel(emu, layout, probeIntervalSeconds=5)
    agent = start_agent()
    emu.set_online("fake_manila", False, reason="maintenance")
    # No probe_now: the registry's own schedule (every 5 s) finds it.
    kubelet.wait_for_devices(
        RESOURCE, lambda ds: healthy_of(ds, "fake-manila") == {False}, timeout=7.0
    )
    seen = time.time()
    state = agent.registry.get("fake-manila")
    assert state is not None
    assert state.health.status == "offline"
    assert seen - state.health.checked_at < 1.0


# -- Allocate ----------------------------------------------------------------------------------


def test_allocate_returns_the_env_contract_and_opens_a_session(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    manila_and_fresnel(emu, layout)
    start_agent()
    resp = kubelet.allocate(RESOURCE, [["fake-manila-lane-1"]])
    (ctr,) = resp.container_responses
    env = dict(ctr.envs)
    cfg = emu.ibm_config("fake_manila")
    assert env["QRMI_JOB_QPU_RESOURCES"] == "fake_manila"
    assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    assert env["SLURM_JOB_QPU_RESOURCES"] == "fake_manila"
    assert env["SLURM_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    for key, value in cfg.items():
        assert env[f"fake_manila_{key}"] == value
    token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    rec = session_of(emu, token)
    assert rec.is_open
    assert rec.backend == "fake_manila"
    # The credential is there only under the documented name.
    key = emu.config.first_api_key
    assert [k for k, v in env.items() if key in v] == ["fake_manila_QRMI_IBM_QCS_IAM_APIKEY"]
    assert not ctr.mounts
    assert not ctr.devices
    assert not ctr.annotations
    assert not ctr.cdi_devices


def test_one_acquisition_per_backend_per_container(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    manila_and_fresnel(emu, layout)
    agent = start_agent()
    resp = kubelet.allocate(
        RESOURCE,
        [["fake-manila-lane-0", "fake-manila-lane-1", "fresnel-lane-0"], ["fresnel-lane-1"]],
    )
    first, second = (dict(c.envs) for c in resp.container_responses)
    assert first["QRMI_JOB_QPU_RESOURCES"] == "fake_manila,FRESNEL"
    assert first["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service,pasqal-cloud"
    assert second["QRMI_JOB_QPU_RESOURCES"] == "FRESNEL"
    assert (
        first["FRESNEL_QRMI_JOB_ACQUISITION_TOKEN"] != second["FRESNEL_QRMI_JOB_ACQUISITION_TOKEN"]
    )
    assert len(emu.state.sessions(backend="fake_manila")) == 1  # two lanes, one session
    acqs = agent.ledger.snapshot()
    assert sorted((a.backend, a.devices) for a in acqs) == [
        ("fake-manila", ("fake-manila-lane-0", "fake-manila-lane-1")),
        ("fresnel", ("fresnel-lane-0",)),
        ("fresnel", ("fresnel-lane-1",)),
    ]


def test_preferred_allocation_spreads_over_backends(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    manila_and_fresnel(emu, layout)
    start_agent()
    available = [d.id for d in kubelet.devices(RESOURCE)]
    chosen = kubelet.get_preferred_allocation(RESOURCE, available, 2)
    assert sorted(c.split("-lane-")[0] for c in chosen) == ["fake-manila", "fresnel"]


@pytest.mark.parametrize(
    ("fault", "code", "kind"),
    [
        ("error5xx", grpc.StatusCode.UNAVAILABLE, "unavailable"),
        ("reject-auth", grpc.StatusCode.PERMISSION_DENIED, "auth"),
        ("hang", grpc.StatusCode.UNAVAILABLE, "timeout"),
    ],
)
def test_failing_acquire_fails_allocate_and_leaves_nothing_acquired(  # noqa: PLR0917
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    start_agent: StartAgent,
    fault: str,
    code: grpc.StatusCode,
    kind: str,
) -> None:
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila"),
            ibm_backend(emu, "fake-nairobi", "fake_nairobi"),
        ]
    )
    agent = start_agent(acquire_timeout=1.0, probe_timeout=0.5)
    emu.set_fault(fault, "fake_nairobi")
    with pytest.raises(grpc.RpcError) as info:
        kubelet.allocate(RESOURCE, [["fake-manila-lane-0", "fake-nairobi-lane-0"]])
    err = info.value
    assert isinstance(err, grpc.Call)
    assert err.code() == code
    message = err.details() or ""
    assert "'fake-nairobi'" in message
    assert "fake_nairobi" in message
    assert f"[{kind}]" in message
    assert "Nothing is held" in message
    assert emu.config.first_api_key not in message
    # The acquisition made for fake-manila in the same call was released at the vendor.
    (manila,) = emu.state.sessions(backend="fake_manila")
    assert not manila.is_open
    assert manila.closed_by == "release"
    if fault != "reject-auth":
        # The failed acquire triggers a probe: the lane stops being scheduled at once.
        kubelet.wait_for_devices(
            RESOURCE, lambda ds: healthy_of(ds, "fake-nairobi") == {False}, timeout=3
        )
    if fault == "hang":
        # The vendor call is still running; when the vendor finally answers, the session
        # it opened is released at once instead of leaking.
        (pending,) = [a for a in agent.ledger.snapshot() if a.state in HOLDING]
        assert pending.backend == "fake-nairobi"
        assert pending.state is AcqState.ACQUIRING
        emu.clear_faults()
        assert emu.state.wait_until(
            lambda s: [x.closed_by for x in s.sessions(backend="fake_nairobi")] == ["release"], 5
        )
        wait_for(
            lambda: all(a.state is AcqState.RELEASED for a in agent.ledger.snapshot()),
            5,
            "the late acquisition to be released",
        )
    assert [a for a in agent.ledger.snapshot() if a.state in HOLDING] == []
    assert all(a.state is AcqState.RELEASED for a in layout.acquisitions())
    emu.clear_faults()


def test_unknown_and_unusable_devices_are_refused_with_the_reason(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    broken = ibm_backend(emu, "broken", "fake_lagos")
    broken["spec"]["credentialsSecretRef"] = {"name": "missing-secret"}
    layout.write_config([ibm_backend(emu, "fake-manila", "fake_manila"), broken])
    start_agent(healthy=False)
    kubelet.wait_for_devices(
        RESOURCE,
        lambda ds: healthy_of(ds, "fake-manila") == {True} and healthy_of(ds, "broken") == {False},
    )
    cases = [
        (["nonsense"], grpc.StatusCode.INVALID_ARGUMENT, "not a device of this plugin"),
        (["gone-lane-0"], grpc.StatusCode.FAILED_PRECONDITION, "not offered on this node"),
        (["broken-lane-0"], grpc.StatusCode.FAILED_PRECONDITION, "'missing-secret'"),
    ]
    for ids, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            kubelet.allocate(RESOURCE, [ids], only_healthy=False)
        assert isinstance(info.value, grpc.Call)
        assert info.value.code() == code
        assert text in (info.value.details() or "")
    assert emu.state.sessions() == []


# -- release ---------------------------------------------------------------------------------


def test_release_when_the_pod_ends(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    start_agent: StartAgent,
) -> None:
    manila_and_fresnel(emu, layout)
    agent = start_agent()
    env = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs)
    token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    pod_resources.set_pods(
        [PodAllocation.with_devices("job-1", "team-a", RESOURCE, ["fake-manila-lane-0"])]
    )
    acq_id = only_acquisition(agent)
    wait_for(lambda: agent.ledger.get(acq_id).state is AcqState.BOUND, 5, "binding")  # type: ignore[union-attr]
    bound = agent.ledger.get(acq_id)
    assert bound is not None
    assert str(bound.holder) == "team-a/job-1/main"
    assert session_of(emu, token).is_open
    pod_resources.set_pods([])  # the pod ended: PodResources no longer lists it
    assert emu.state.wait_until(lambda s: not session_of(emu, token).is_open, 5)
    wait_for(lambda: agent.ledger.get(acq_id).state is AcqState.RELEASED, 5, "released")  # type: ignore[union-attr]
    calls = pod_resources.calls("List")
    wait_for(lambda: pod_resources.calls("List") >= calls + 5, 5, "more reconcile passes")
    assert release_requests(emu, token) == 1


def test_no_release_while_pod_resources_is_unavailable(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    start_agent: StartAgent,
) -> None:
    manila_and_fresnel(emu, layout)
    agent = start_agent()
    pod_resources.fail_with(grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
    env = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs)
    token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    calls = pod_resources.calls("List")
    # Well past the 0.3 s grace, every List failing: nothing may be released.
    wait_for(lambda: pod_resources.calls("List") >= calls + 10, 5, "failed List calls")
    assert session_of(emu, token).is_open
    assert agent.ledger.snapshot()[0].state is AcqState.ALLOCATED
    pod_resources.fail_with(None)
    pod_resources.set_pods(
        [PodAllocation.with_devices("job-1", "team-a", RESOURCE, ["fake-manila-lane-0"])]
    )
    wait_for(lambda: agent.ledger.snapshot()[0].state is AcqState.BOUND, 5, "binding")
    assert session_of(emu, token).is_open


def test_failed_release_is_retried_with_backoff_and_done_once(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    start_agent: StartAgent,
) -> None:
    manila_and_fresnel(emu, layout)
    agent = start_agent()
    env = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs)
    token = env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    emu.set_fault("error5xx", "fake_manila")
    pod_resources.set_pods([])  # never listed: released after the grace period
    wait_for(
        lambda: agent.ledger.snapshot()[0].release_attempts >= 1, 5, "a failed release attempt"
    )
    acq = agent.ledger.snapshot()[0]
    assert acq.state is AcqState.RELEASING
    assert "[unavailable]" in acq.last_error
    assert session_of(emu, token).is_open
    emu.clear_faults()
    assert emu.state.wait_until(lambda s: not session_of(emu, token).is_open, 5)
    wait_for(lambda: agent.ledger.snapshot()[0].state is AcqState.RELEASED, 5, "released")
    assert release_requests(emu, token) == 1


# -- config reload -----------------------------------------------------------------------------


def test_config_reload_changes_devices_without_restart(
    emu: Emulator, layout: Layout, kubelet: FakeDevicePluginKubelet, start_agent: StartAgent
) -> None:
    layout.write_config([ibm_backend(emu, "fake-manila", "fake_manila", lanes=1)])
    agent = start_agent()
    assert [d.id for d in kubelet.devices(RESOURCE)] == ["fake-manila-lane-0"]
    manila_and_fresnel(emu, layout)  # manila gets 2 lanes, fresnel appears with 3
    devs = kubelet.wait_for_devices(
        RESOURCE, lambda ds: len(ds) == 5 and all(d.healthy for d in ds), timeout=5
    )
    assert {d.id for d in devs} >= {"fake-manila-lane-1", "fresnel-lane-2"}
    layout.write_config([pasqal_backend(emu, "fresnel", "FRESNEL", lanes=1)])
    kubelet.wait_for_devices(RESOURCE, lambda ds: [d.id for d in ds] == ["fresnel-lane-0"])
    layout.config.write_text("backends: [ {name: Not_Valid} ]")  # a broken update is ignored
    wait_for(lambda: agent.registry.config_error, 5, "the config error to be noticed")
    assert [d.id for d in kubelet.devices(RESOURCE)] == ["fresnel-lane-0"]
    assert agent.registrar.registrations == 1
