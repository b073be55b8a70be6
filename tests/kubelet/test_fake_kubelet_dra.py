"""The fake DRA kubelet: registration handshake, prepare/unprepare under both service
versions, rejection, deregistration and the health stream, against a tiny real plugin."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qpu_k8s.fakekubelet import (
    AnsweredDevice,
    ClaimRef,
    FakeDRAKubelet,
    KubeletFakeError,
    PrepareResult,
)
from qpu_k8s.fakekubelet.dra import choose_service
from testsupport.names import DRIVER
from testsupport.tinyplugins import TinyDRAPlugin, health

CLAIM = ClaimRef(namespace="team-a", uid="uid-1", name="qpu-claim")


@pytest.fixture
def plugin(dra_dirs: tuple[Path, Path]) -> Iterator[TinyDRAPlugin]:
    p = TinyDRAPlugin(*dra_dirs)
    p.start()
    yield p
    p.stop()


def test_registration_handshake(dra_dirs: tuple[Path, Path], plugin: TinyDRAPlugin) -> None:
    with FakeDRAKubelet(dra_dirs[0]) as kubelet:
        reg = kubelet.wait_for_registration(DRIVER)
        assert reg.endpoint == str(plugin.endpoint)
        assert reg.chosen_version == "v1"
        assert reg.health_versions == ("v1alpha1",)
        assert reg.socket_path == dra_dirs[0] / f"{DRIVER}-reg.sock"
        assert plugin.wait_status() == (True, "")
        assert kubelet.rejections == []


def test_prepare_and_unprepare_reach_both_service_versions(
    dra_dirs: tuple[Path, Path], plugin: TinyDRAPlugin
) -> None:
    with FakeDRAKubelet(dra_dirs[0]) as kubelet:
        kubelet.wait_for_registration(DRIVER)
        v1 = kubelet.node_prepare_resources([CLAIM], "v1")
        assert v1["uid-1"].error == ""
        assert v1["uid-1"].devices == (
            AnsweredDevice(("qpu",), "node-a", "qpu-0", (f"{DRIVER}/claim=uid-1",), "share-1"),
        )
        beta = kubelet.node_prepare_resources(
            [CLAIM, ClaimRef("team-a", "bad", "x")], "v1beta1", driver_name=DRIVER
        )
        assert beta["uid-1"].devices[0].device_name == "qpu-1"
        assert beta["uid-1"].devices[0].share_id is None
        assert beta["bad"] == PrepareResult((), "no such claim")
        assert kubelet.node_unprepare_resources([CLAIM], "v1") == {"uid-1": ""}
        assert kubelet.node_unprepare_resources([CLAIM], "v1beta1") == {"uid-1": ""}
        assert kubelet.node_prepare_resources([CLAIM])["uid-1"].devices[0].device_name == "qpu-0"
        assert plugin.calls == [
            ("v1", "prepare", ["uid-1"]),
            ("v1beta1", "prepare", ["uid-1", "bad"]),
            ("v1", "unprepare", ["uid-1"]),
            ("v1beta1", "unprepare", ["uid-1"]),
            ("v1", "prepare", ["uid-1"]),  # default: the service the kubelet chose
        ]


def test_only_v1beta1_advertised_is_chosen(dra_dirs: tuple[Path, Path]) -> None:
    p = TinyDRAPlugin(*dra_dirs, versions=("v1beta1.DRAPlugin",))
    p.start()
    try:
        with FakeDRAKubelet(dra_dirs[0]) as kubelet:
            assert kubelet.wait_for_registration().chosen_version == "v1beta1"
            kubelet.node_prepare_resources([CLAIM])
            assert p.calls == [("v1beta1", "prepare", ["uid-1"])]
    finally:
        p.stop()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"plugin_type": "CSIPlugin"}, "no handler registered for plugin type: CSIPlugin"),
        (
            {"versions": ("v1alpha4.DRAPlugin",)},
            'none of services supported by the plugin (["v1alpha4.DRAPlugin"]) are supported '
            'by the kubelet (["v1.DRAPlugin" "v1beta1.DRAPlugin"])',
        ),
        ({"versions": ()}, "empty list of supported gRPC services"),
    ],
)
def test_invalid_plugins_are_told_why(
    dra_dirs: tuple[Path, Path], kwargs: dict[str, object], expected: str
) -> None:
    p = TinyDRAPlugin(*dra_dirs, **kwargs)
    p.start()
    try:
        with FakeDRAKubelet(dra_dirs[0]) as kubelet:
            rejection = kubelet.wait_for_rejection()
            assert expected in rejection.message
            registered, error = p.wait_status()
            assert not registered
            assert error == rejection.message
            assert kubelet.registrations == []
            with pytest.raises(KubeletFakeError, match="registered drivers are"):
                kubelet.client()
    finally:
        p.stop()


def test_ignores_hidden_and_non_socket_files_and_deregisters_removed_socket(
    dra_dirs: tuple[Path, Path], plugin: TinyDRAPlugin
) -> None:
    registry = dra_dirs[0]
    (registry / "notes.sock").write_text("not a socket")
    with FakeDRAKubelet(registry) as kubelet:
        kubelet.wait_for_registration(DRIVER)
        plugin.remove_registration_socket()
        gone = kubelet.wait_for_deregistration(DRIVER)
        assert gone.driver_name == DRIVER
        with pytest.raises(KubeletFakeError, match="not registered"):
            kubelet.client(DRIVER)
        assert len(kubelet.registrations) == 1
        assert kubelet.rejections == []


def test_plugin_started_after_the_kubelet_is_found(dra_dirs: tuple[Path, Path]) -> None:
    with FakeDRAKubelet(dra_dirs[0]) as kubelet:
        p = TinyDRAPlugin(*dra_dirs)
        p.start()
        try:
            assert kubelet.wait_for_registration(DRIVER).driver_name == DRIVER
        finally:
            p.stop()


def test_health_stream_updates(dra_dirs: tuple[Path, Path], plugin: TinyDRAPlugin) -> None:
    with FakeDRAKubelet(dra_dirs[0]) as kubelet:
        kubelet.wait_for_registration(DRIVER)
        with kubelet.watch_health("v1alpha1") as watch:
            first = watch.wait_for()
            assert first[("node-a", "qpu-0")].health == "HEALTHY"
            plugin.set_health("qpu-0", health.UNHEALTHY)
            latest = watch.wait_for(lambda d: d[("node-a", "qpu-0")].health == "UNHEALTHY")
            state = latest[("node-a", "qpu-0")]
            assert (state.message, state.last_updated_time) == ("probe failed", 1_700_000_000)
        assert watch.ended
        assert watch.error is None


def test_health_v1_unimplemented_is_reported(
    dra_dirs: tuple[Path, Path], plugin: TinyDRAPlugin
) -> None:
    with FakeDRAKubelet(dra_dirs[0]) as kubelet:
        kubelet.wait_for_registration(DRIVER)
        watch = kubelet.watch_health("v1")
        with pytest.raises(KubeletFakeError, match="UNIMPLEMENTED"):
            watch.wait_for()
        watch.close()


def test_choose_service_prefers_plugin_order() -> None:
    assert choose_service(["v1beta1.DRAPlugin", "v1.DRAPlugin"]) == "v1beta1"
    assert choose_service(["x", "v1.DRAPlugin"]) == "v1"


def test_stale_socket_does_not_hold_up_a_live_plugin(dra_dirs: tuple[Path, Path]) -> None:
    registry = dra_dirs[0]
    registry.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(registry / "aaa-dead.sock"))  # bound, never listening: connection refused
    stale.close()
    with FakeDRAKubelet(registry, retry_interval=0.05) as kubelet:
        p = TinyDRAPlugin(*dra_dirs)
        p.start()
        try:
            start = time.monotonic()
            kubelet.wait_for_registration(DRIVER, timeout=5)
            assert time.monotonic() - start < 2.0
            assert kubelet.rejections == []
        finally:
            p.stop()
