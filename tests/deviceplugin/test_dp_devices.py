"""Devices from backend states, and GetPreferredAllocation's spreading rule."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.core.model import parse_backend
from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.deviceplugin.devices import DeviceBoard, devices_of
from qpu_k8s.node.registry import NOT_PROBED, BackendRegistry, BackendState

ONLINE = Health(True, "online")


def backend(name: str, lanes: int, **spec: Any) -> Any:
    return parse_backend(
        {
            "name": name,
            "spec": {
                "resourceId": name.replace("-", "_"),
                "type": "pasqal-local",
                "config": {"QRMI_WARDEN_URL": "http://127.0.0.1:1"},
                "lanes": lanes,
                **spec,
            },
        }
    )


class _Client:
    def __init__(self, b: Any) -> None:
        self.backend = b


def state(name: str, lanes: int, health: Health = ONLINE, error: str | None = None) -> BackendState:
    b = backend(name, lanes)
    return BackendState(b, _Client(b), health, error)  # type: ignore[arg-type]


def test_one_device_per_lane_ordered_and_health_follows_the_backend() -> None:
    devs = devices_of(
        [
            state("zeta", 1, Health(False, "offline", "maintenance")),
            state("alpha", 3),
            state("mid", 2, error="credentials for backend 'mid': Secret 'x' could not be read"),
            state("new", 1, NOT_PROBED),
        ]
    )
    assert [(d.id, d.health) for d in devs] == [
        ("alpha-lane-0", "Healthy"),
        ("alpha-lane-1", "Healthy"),
        ("alpha-lane-2", "Healthy"),
        ("mid-lane-0", "Unhealthy"),
        ("mid-lane-1", "Unhealthy"),
        ("new-lane-0", "Unhealthy"),
        ("zeta-lane-0", "Unhealthy"),
    ]


class _Registry:
    """Just enough of BackendRegistry for the board: a snapshot and subscribe."""

    def __init__(self, states: list[BackendState]) -> None:
        self.states = {s.backend.name: s for s in states}

    def snapshot(self) -> dict[str, BackendState]:
        return dict(self.states)

    def subscribe(self, cb: Any) -> None:
        pass


@pytest.fixture
def board() -> DeviceBoard:
    reg = _Registry([state("a", 4), state("b", 2), state("c", 1)])
    b = DeviceBoard(reg)  # type: ignore[arg-type]
    b.refresh()
    return b


def test_preferred_spreads_over_backends(board: DeviceBoard) -> None:
    available = ["a-lane-0", "a-lane-1", "a-lane-2", "b-lane-0", "b-lane-1", "c-lane-0"]
    chosen = board.preferred(available, [], 3)
    assert sorted(d.split("-lane-")[0] for d in chosen) == ["a", "b", "c"]


def test_preferred_picks_least_loaded_backend_first(board: DeviceBoard) -> None:
    # a: 1 of 4 lanes free (75 % busy); b: 2 of 2 free (idle).
    assert board.preferred(["a-lane-3", "b-lane-0", "b-lane-1"], [], 1) == ["b-lane-0"]


def test_preferred_among_idle_backends_takes_the_one_with_most_lanes() -> None:
    """The chart's emulator: emulator-fresnel (1 lane) sorts before emulator-manila (2 lanes);
    both idle, the bigger pool takes the pod (on a real kubelet the bell-qiskit example got the
    Pasqal lane every time)."""
    reg = _Registry([state("emulator-fresnel", 1), state("emulator-manila", 2)])
    b = DeviceBoard(reg)  # type: ignore[arg-type]
    b.refresh()
    available = ["emulator-fresnel-lane-0", "emulator-manila-lane-0", "emulator-manila-lane-1"]
    assert b.preferred(available, [], 1) == ["emulator-manila-lane-0"]


def test_preferred_keeps_must_include_and_fills_from_other_backends(board: DeviceBoard) -> None:
    chosen = board.preferred(["a-lane-0", "a-lane-1", "b-lane-0"], ["a-lane-1"], 2)
    assert chosen == ["a-lane-1", "b-lane-0"]


def test_preferred_same_backend_only_when_nothing_else_is_free(board: DeviceBoard) -> None:
    assert board.preferred(["a-lane-0", "a-lane-1"], [], 2) == ["a-lane-0", "a-lane-1"]


def test_preferred_never_invents_devices(board: DeviceBoard) -> None:
    assert board.preferred(["c-lane-0"], [], 3) == ["c-lane-0"]


def test_registry_filters_node_bound_backends_by_node_labels(tmp_path: Path) -> None:
    import yaml

    cfg = tmp_path / "backends.yaml"
    warden = {"QRMI_WARDEN_URL": "http://127.0.0.1:1"}
    docs = [
        {"name": "onprem", "spec": {"resourceId": "onprem", "type": "pasqal-local",
                                    "config": warden, "access": "node-bound",
                                    "nodeSelector": {"lab": "zurich"}, "lanes": 2}},
        {"name": "elsewhere", "spec": {"resourceId": "elsewhere", "type": "pasqal-local",
                                       "config": warden, "access": "node-bound",
                                       "nodeSelector": {"lab": "paris"}}},
        {"name": "cloud", "spec": {"resourceId": "cloud", "type": "pasqal-local",
                                   "config": warden}},
    ]  # fmt: skip
    cfg.write_text(yaml.safe_dump({"backends": docs}))

    def ids(labels: dict[str, str], shared: bool = True) -> list[str]:
        reg = BackendRegistry(
            cfg, None, node_labels=labels, include_shared=shared,
            client_factory=lambda b, c: _Client(b),  # type: ignore[arg-type,return-value]
        )  # fmt: skip
        reg.reload()
        return [d.id for d in devices_of(reg.snapshot().values())]

    assert ids({"lab": "zurich"}) == ["cloud-lane-0", "onprem-lane-0", "onprem-lane-1"]
    assert ids({"lab": "zurich"}, shared=False) == ["onprem-lane-0", "onprem-lane-1"]
    assert ids({}) == ["cloud-lane-0"]


def test_registry_warns_once_about_a_deprecated_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    cfg = tmp_path / "backends.yaml"
    config = {
        "QRMI_IBM_QRS_ENDPOINT": "http://127.0.0.1:9/api/v1",
        "QRMI_IBM_QRS_IAM_ENDPOINT": "http://127.0.0.1:9",
        "QRMI_IBM_QRS_SERVICE_CRN": "crn:x",
    }
    docs = [{"name": "old", "spec": {"resourceId": "r", "type": "qiskit-runtime-service",
                                     "config": config,
                                     "credentialsSecretRef": {"name": "ibm"}}}]  # fmt: skip
    cfg.write_text(yaml.safe_dump({"backends": docs}))
    reg = BackendRegistry(
        cfg, None, node_labels={}, include_shared=True,
        client_factory=lambda b, c: _Client(b),  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="qpu_k8s.node.registry"):
        reg.reload()
        docs[0]["spec"]["lanes"] = 2  # an update is not a second warning
        cfg.write_text(yaml.safe_dump({"backends": docs}))
        os.utime(cfg, ns=(1, 1))  # a new stamp, whatever the clock's resolution
        reg.reload()
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1
    assert "use spec.type ibm-quantum-compute-service" in warnings[0].getMessage().lower()
    assert [d.id for d in devices_of(reg.snapshot().values())] == ["old-lane-0", "old-lane-1"]
