"""``qpu-k8s device-plugin`` as a real process: restarts, signals, kubelet restarts, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest

from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    FakeDevicePluginKubelet,
    FakePodResourcesServer,
    PodAllocation,
)
from testsupport.deviceplugin import Layout, StartPlugin, more_lists
from testsupport.emulator import ibm_backend, pasqal_backend, release_requests, session_of
from testsupport.names import RESOURCE
from testsupport.processes import terminate_or_kill
from testsupport.waiting import wait_for


def pod(name: str, *devices: str) -> PodAllocation:
    return PodAllocation.with_devices(name, "team-a", RESOURCE, list(devices))


def ready(kubelet: FakeDevicePluginKubelet, n: int) -> None:
    kubelet.wait_for_devices(
        RESOURCE, lambda ds: len(ds) == n and all(d.healthy for d in ds), timeout=20
    )


def allocate_token(kubelet: FakeDevicePluginKubelet, *devices: str) -> str:
    env = dict(kubelet.allocate(RESOURCE, [list(devices)]).container_responses[0].envs)
    return env["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]


def checkpoint_states(layout: Layout) -> dict[str | None, AcqState]:
    return {a.token: a.state for a in layout.acquisitions()}


def test_sigterm_stops_cleanly_and_keeps_what_pods_hold(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm_backend(emu, "fake-manila", "fake_manila")])
    plugin = plugin_process()
    ready(kubelet, 1)
    token = allocate_token(kubelet, "fake-manila-lane-0")
    pod_resources.set_pods([pod("job", "fake-manila-lane-0")])
    wait_for(lambda: checkpoint_states(layout) == {token: AcqState.BOUND}, 10, "bound")
    socket = layout.dp_dir / kubelet.wait_for_registration().endpoint
    started = time.monotonic()
    assert plugin.terminate() == 0
    assert time.monotonic() - started < 5
    assert not socket.exists()  # the kubelet sees the endpoint go away
    kubelet.wait_for_stream_end(RESOURCE)
    assert session_of(emu, token).is_open  # the running pod keeps its QPU
    assert checkpoint_states(layout) == {token: AcqState.BOUND}
    stopped = [r for r in plugin.records() if r.get("msg", "").startswith("device plugin stopped")]
    assert stopped[0]["live"] == 1


def test_plugin_restart_neither_leaks_nor_double_releases(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm_backend(emu, "fake-manila", "fake_manila", lanes=2)])
    plugin = plugin_process()
    ready(kubelet, 2)
    kept = allocate_token(kubelet, "fake-manila-lane-0")
    ended = allocate_token(kubelet, "fake-manila-lane-1")
    pod_resources.set_pods([pod("stays", "fake-manila-lane-0"), pod("ends", "fake-manila-lane-1")])
    wait_for(
        lambda: checkpoint_states(layout) == {kept: AcqState.BOUND, ended: AcqState.BOUND},
        10,
        "both acquisitions bound",
    )
    assert plugin.kill() == -9  # no chance to clean up
    pod_resources.set_pods([pod("stays", "fake-manila-lane-0")])  # one pod ends meanwhile

    second = plugin_process()
    second.wait_log("registered with the kubelet")
    # What the checkpoint holds but the kubelet no longer does is released...
    assert emu.state.wait_until(lambda s: not session_of(emu, ended).is_open, 10)
    more_lists(pod_resources)
    # ...exactly once, and the running pod keeps its acquisition.
    assert release_requests(emu, ended) == 1
    assert session_of(emu, kept).is_open
    assert checkpoint_states(layout) == {kept: AcqState.BOUND, ended: AcqState.RELEASED}

    assert second.kill() == -9
    third = plugin_process()
    third.wait_log("registered with the kubelet")
    more_lists(pod_resources)
    assert release_requests(emu, ended) == 1  # not released again after another restart
    assert session_of(emu, kept).is_open
    pod_resources.set_pods([])
    assert emu.state.wait_until(lambda s: not session_of(emu, kept).is_open, 10)
    more_lists(pod_resources)
    assert release_requests(emu, kept) == 1
    assert [s.id for s in emu.state.open_sessions()] == []


def test_kubelet_restart_reregisters_fast_and_keeps_running_pods(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    layout.write_config([ibm_backend(emu, "fake-manila", "fake_manila", lanes=2)])
    plugin = plugin_process("--kubelet-restart-hold", "3")
    ready(kubelet, 2)
    token = allocate_token(kubelet, "fake-manila-lane-0")
    pod_resources.set_pods([pod("job", "fake-manila-lane-0")])
    wait_for(lambda: checkpoint_states(layout) == {token: AcqState.BOUND}, 10, "bound")

    # A restarting kubelet wipes the directory and lists no pods until it has synced.
    pod_resources.set_pods([])
    started = time.monotonic()
    kubelet.restart()
    reg = kubelet.wait_for_registration(timeout=2.0)
    took = time.monotonic() - started
    assert reg.generation == 2
    assert took < 2.0, f"re-registration took {took:.2f}s"
    ready(kubelet, 2)
    more_lists(pod_resources, 3)
    pod_resources.set_pods([pod("job", "fake-manila-lane-0")])  # the kubelet has synced
    more_lists(pod_resources)
    assert session_of(emu, token).is_open
    assert checkpoint_states(layout) == {token: AcqState.BOUND}
    assert plugin.metric("qpu_k8s_deviceplugin_registrations_total") == 2
    # The node keeps working after the restart.
    second = allocate_token(kubelet, "fake-manila-lane-1")
    assert session_of(emu, second).is_open


def test_no_secret_in_logs_metrics_checkpoint_or_errors(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    api_key = emu.config.first_api_key
    pasqal_token = emu.config.first_pasqal_token
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila"),
            ibm_backend(emu, "fake-nairobi", "fake_nairobi"),
            pasqal_backend(emu, "fresnel", "FRESNEL"),
        ]
    )
    plugin = plugin_process()  # debug logging
    ready(kubelet, 3)
    resp = kubelet.allocate(RESOURCE, [["fake-manila-lane-0", "fresnel-lane-0"]])
    (ctr,) = resp.container_responses
    pod_resources.set_pods([pod("job", "fake-manila-lane-0", "fresnel-lane-0")])
    wait_for(lambda: {a.state for a in layout.acquisitions()} == {AcqState.BOUND}, 10, "binding")
    # Error paths: rejected credentials on acquire and on the probes.
    emu.set_fault("reject-auth", "fake_nairobi")
    with pytest.raises(grpc.RpcError) as info:
        kubelet.allocate(RESOURCE, [["fake-nairobi-lane-0"]])
    kubelet.wait_for_devices(RESOURCE, lambda ds: any(not d.healthy for d in ds), timeout=10)
    pod_resources.set_pods([])
    wait_for(
        lambda: {a.state for a in layout.acquisitions()} == {AcqState.RELEASED}, 10, "releases"
    )
    metrics_text = plugin.metrics()
    assert plugin.terminate() == 0

    # Where the credentials must be: the Allocate envs, under the documented names only.
    env = dict(ctr.envs)
    assert [k for k, v in env.items() if api_key in v] == ["fake_manila_QRMI_IBM_QCS_IAM_APIKEY"]
    assert [k for k, v in env.items() if pasqal_token in v] == [
        "FRESNEL_QRMI_PASQAL_CLOUD_AUTH_TOKEN"
    ]
    assert not ctr.annotations
    assert not ctr.mounts
    # Where they must not be: every log line, the metrics, our checkpoint, error messages.
    places = {
        "plugin log": plugin.text(),
        "metrics": metrics_text,
        "allocate error": str(info.value.details()),
    }
    for path in layout.state_dir.rglob("*"):
        if path.is_file():
            places[f"state file {path.name}"] = path.read_text(errors="replace")
    logged = {r.get("msg") for r in plugin.records()}
    # The paths that handle credentials really ran and logged.
    assert {"allocated", "allocate failed", "released", "backend health changed"} <= logged
    for family in (
        "qpu_k8s_deviceplugin_allocations_total",
        "qpu_k8s_deviceplugin_acquisitions_live",
        "qpu_k8s_deviceplugin_acquire_duration_seconds_bucket",
        "qpu_k8s_deviceplugin_release_duration_seconds_bucket",
        "qpu_k8s_deviceplugin_device_healthy",
        "qpu_k8s_vendor_errors_total",
    ):
        assert family in metrics_text, f"/metrics has no {family}"
    assert 'qpu_k8s_deviceplugin_allocations_total{result="auth"} 1.0' in metrics_text
    for where, text in places.items():
        for secret in (api_key, pasqal_token):
            assert secret not in text, f"a credential leaked into the {where}"


def test_every_path_flag_falls_back_to_its_env_var(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
) -> None:
    layout.write_config([ibm_backend(emu, "fake-manila", "fake_manila")])
    env = {
        **os.environ,
        "QPU_K8S_DEVICE_PLUGIN_DIR": str(layout.dp_dir),
        "QPU_K8S_POD_RESOURCES_SOCKET": str(layout.pod_resources),
        "QPU_K8S_STATE_DIR": str(layout.state_dir),
        "QPU_K8S_CONFIG": str(layout.config),
        "QPU_K8S_CREDENTIALS_DIR": str(layout.credentials),
        "QPU_K8S_RESOURCE_NAME": "example.org/qpu",
        "QPU_K8S_METRICS_ADDRESS": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "qpu_k8s.cli", "device-plugin"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        reg = kubelet.wait_for_registration(timeout=20, resource_name="example.org/qpu")
        assert reg.endpoint == "qpu-k8s-example.org_qpu.sock"
        kubelet.wait_for_devices(
            "example.org/qpu", lambda ds: [d.id for d in ds] == ["fake-manila-lane-0"], timeout=20
        )
        wait_for(layout.checkpoint.exists, 5, "the checkpoint in QPU_K8S_STATE_DIR")
    finally:
        assert terminate_or_kill(proc, 15) == 0


def test_help_lists_flags_with_env_names_and_bad_input_names_the_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qpu_k8s.cli", "device-plugin", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--device-plugin-dir",
        "--pod-resources-socket",
        "--state-dir",
        "--config",
        "--credentials-dir",
        "--resource-name",
        "--node-name",
        "--node-labels",
        "--metrics-address",
        "--probe-timeout",
        "--reconcile-interval",
    ):
        assert flag in out
        assert "QPU_K8S_" + flag[2:].upper().replace("-", "_") in out
    bad = subprocess.run(
        [sys.executable, "-m", "qpu_k8s.cli", "device-plugin", "--node-labels", "zone"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "--node-labels: 'zone' is not key=value" in bad.stderr
