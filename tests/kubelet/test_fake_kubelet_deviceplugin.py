"""The fake device-plugin kubelet against a tiny real gRPC plugin."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from qpu_k8s.fakekubelet import (
    DeviceState,
    FakeDevicePluginKubelet,
    KubeletFakeError,
    PluginOptions,
    is_extended_resource_name,
)
from testsupport.names import RESOURCE
from testsupport.tinyplugins import TinyDevicePlugin


def test_register_records_registration_options_and_devices(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    with FakeDevicePluginKubelet(dp_dir) as kubelet:
        assert (dp_dir / "kubelet.sock").is_socket()
        tiny_plugin.register()
        reg = kubelet.wait_for_registration(timeout=5)
        assert (reg.resource_name, reg.endpoint, reg.version) == (RESOURCE, "tiny.sock", "v1beta1")
        assert reg.options == PluginOptions(True, True)
        assert reg.generation == 1
        assert kubelet.options(RESOURCE) == PluginOptions(True, True)
        devices = kubelet.wait_for_devices(RESOURCE, lambda ds: len(ds) == 2)
        assert devices == [
            DeviceState("qpu-0", "Healthy", (0,)),
            DeviceState("qpu-1", "Healthy", (0,)),
        ]


def test_list_and_watch_updates_are_observed(dp_dir: Path, tiny_plugin: TinyDevicePlugin) -> None:
    with FakeDevicePluginKubelet(dp_dir) as kubelet:
        tiny_plugin.register()
        kubelet.wait_for_devices(RESOURCE, lambda ds: len(ds) == 2)
        tiny_plugin.set_health("qpu-1", "Unhealthy")
        devices = kubelet.wait_for_devices(
            RESOURCE, lambda ds: any(d.id == "qpu-1" and not d.healthy for d in ds)
        )
        assert [d.healthy for d in devices] == [True, False]
        assert kubelet.list_and_watch_updates(RESOURCE) >= 2


def test_allocate_preferred_and_prestart_round_trip(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    with FakeDevicePluginKubelet(dp_dir) as kubelet:
        tiny_plugin.register()
        kubelet.wait_for_devices(RESOURCE, lambda ds: len(ds) == 2)
        response = kubelet.allocate(RESOURCE, [["qpu-0"], ["qpu-0", "qpu-1"]])
        assert [dict(c.envs) for c in response.container_responses] == [
            {"QRMI_JOB_QPU_RESOURCES": "qpu-0"},
            {"QRMI_JOB_QPU_RESOURCES": "qpu-0,qpu-1"},
        ]
        assert [d.name for d in response.container_responses[1].cdi_devices] == [
            "quantum.example.com/qpu=qpu-0",
            "quantum.example.com/qpu=qpu-1",
        ]
        assert kubelet.get_preferred_allocation(RESOURCE, ["qpu-0", "qpu-1"], size=1) == ["qpu-1"]
        assert kubelet.get_preferred_allocation(
            RESOURCE, ["qpu-0", "qpu-1"], size=1, must_include=["qpu-0"]
        ) == ["qpu-0"]
        kubelet.pre_start_container(RESOURCE, ["qpu-1"])
        assert tiny_plugin.prestarted == [["qpu-1"]]


def test_allocate_refuses_devices_not_advertised_healthy(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    with FakeDevicePluginKubelet(dp_dir) as kubelet:
        tiny_plugin.register()
        tiny_plugin.set_health("qpu-1", "Unhealthy")
        kubelet.wait_for_devices(RESOURCE, lambda ds: not all(d.healthy for d in ds))
        with pytest.raises(KubeletFakeError, match=r"\['qpu-1', 'qpu-9'\]"):
            kubelet.allocate(RESOURCE, [["qpu-1", "qpu-9"]])
        with pytest.raises(KubeletFakeError, match="no device plugin registered"):
            kubelet.allocate("other.example.com/x", [["a"]])


def test_wrong_version_is_rejected_like_the_kubelet(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    with FakeDevicePluginKubelet(dp_dir) as kubelet:
        with pytest.raises(grpc.RpcError) as info:
            tiny_plugin.register(version="v1alpha")
        err = info.value
        assert isinstance(err, grpc.Call)
        assert err.code() == grpc.StatusCode.UNKNOWN
        assert err.details() == (
            'requested API version "v1alpha" is not supported by kubelet. '
            'Supported version is ["v1beta1"]'
        )
        assert kubelet.wait_for_rejection().version == "v1alpha"
        assert kubelet.registrations == []


def test_invalid_resource_name_and_unserved_endpoint_are_rejected(dp_dir: Path) -> None:
    plugin = TinyDevicePlugin(dp_dir, endpoint="not-served.sock")  # never started
    with FakeDevicePluginKubelet(dp_dir, dial_timeout=0.3) as kubelet:
        with pytest.raises(grpc.RpcError, match='the ResourceName "qpu" is invalid'):
            plugin.register(resource="qpu")
        with pytest.raises(grpc.RpcError, match="failed to dial device plugin"):
            plugin.register()
        assert len(kubelet.rejections) == 2
        assert kubelet.registrations == []


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("quantum.example.com/qpu", True),
        ("example.com/a_b.c-d", True),
        ("qpu", False),
        ("kubernetes.io/qpu", False),
        ("requests.example.com/qpu", False),
        ("Example.com/qpu", False),
        ("example.com/", False),
        ("a/b/c", False),
        ("example.com/" + "x" * 64, False),
    ],
)
def test_extended_resource_name_rule(name: str, ok: bool) -> None:
    assert is_extended_resource_name(name) is ok


def test_restart_wipes_sockets_and_accepts_reregistration(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    (dp_dir / "kubelet_internal_checkpoint").write_text("{}")
    (dp_dir / "leftover.txt").write_text("x")
    (dp_dir / "subdir").mkdir()
    with FakeDevicePluginKubelet(dp_dir) as kubelet:
        tiny_plugin.register()
        kubelet.wait_for_devices(RESOURCE)
        old_inode = (dp_dir / "kubelet.sock").stat().st_ino

        kubelet.restart()

        assert kubelet.generation == 2
        assert not (dp_dir / "tiny.sock").exists()
        assert not (dp_dir / "leftover.txt").exists()
        assert (dp_dir / "kubelet_internal_checkpoint").exists()
        assert (dp_dir / "subdir").is_dir()
        assert (dp_dir / "kubelet.sock").stat().st_ino != old_inode
        tiny_plugin.wait_stream_ended()  # the old kubelet's ListAndWatch went away
        assert kubelet.devices(RESOURCE) == []
        with pytest.raises(KubeletFakeError, match="generation 2"):
            kubelet.wait_for_registration(timeout=0.05)

        tiny_plugin.stop()  # a real plugin re-serves its socket, then registers again
        tiny_plugin.start()
        tiny_plugin.register()
        reg = kubelet.wait_for_registration()
        assert reg.generation == 2
        assert [r.generation for r in kubelet.registrations] == [1, 2]
        assert len(kubelet.wait_for_devices(RESOURCE)) == 2


def test_stop_removes_socket_and_leaves_no_threads(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    kubelet = FakeDevicePluginKubelet(dp_dir)
    kubelet.start()
    tiny_plugin.register()
    kubelet.wait_for_devices(RESOURCE)
    kubelet.stop()
    assert not (dp_dir / "kubelet.sock").exists()
    tiny_plugin.wait_stream_ended()
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("fake-kubelet")]
    assert leaked == []
    assert not any(t.name.startswith("fake-kubelet.sock") for t in threading.enumerate())


def test_crash_leaves_a_dead_socket_and_start_replaces_it(
    dp_dir: Path, tiny_plugin: TinyDevicePlugin
) -> None:
    kubelet = FakeDevicePluginKubelet(dp_dir)
    kubelet.start()
    try:
        kubelet.stop(remove_socket=False)
        assert (dp_dir / "kubelet.sock").is_socket()
        with pytest.raises(grpc.RpcError):
            tiny_plugin.register()
        kubelet.start()
        tiny_plugin.register()
        assert kubelet.wait_for_registration().generation == 2
    finally:
        kubelet.stop()
