"""Unit tests of the DRA driver's parts: parameters, CDI files, checkpoint, health fan-out."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from qpu_k8s.core import journal
from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.core.vendors import ResourceType, profile
from qpu_k8s.dra.cdi import CdiWriter
from qpu_k8s.dra.health import DeviceHealth, DeviceHealthStatus, health_board, status_of
from qpu_k8s.dra.params import effective_parameters
from qpu_k8s.dra.registration import instance_id, socket_paths
from qpu_k8s.dra.state import (
    CHECKPOINT_NAME,
    JOURNAL_VERSION,
    ClaimPhase,
    ClaimRecord,
    DeviceRecord,
    Record,
    StateStore,
)
from qpu_k8s.resourceslices.policy import unhealthy_taint
from testsupport.dra import params_config
from testsupport.names import DRIVER


def test_parameters_merge_in_order_and_follow_requests() -> None:
    configs = [
        {"source": "FromClass", **params_config(sessionMode="dedicated", sessionMaxTtlSeconds=600)},
        params_config("gpu-request", sessionMode="batch"),  # another request: ignored
        params_config("qpu", sessionMode="batch"),
        {"opaque": {"driver": "other.driver", "parameters": {"anything": True}}},
    ]
    eff = effective_parameters(configs, "qpu/fast", DRIVER, "x")  # a firstAvailable sub-request
    assert eff.session_mode == "batch"
    assert eff.session_max_ttl_seconds == 600
    assert eff.credentials_secret is None
    assert effective_parameters([], "qpu", DRIVER, "x").session_mode is None


def test_session_keys_per_type() -> None:
    qcs = profile(ResourceType.IBM_QUANTUM_COMPUTE_SERVICE)
    keys = (qcs.session_mode_key, qcs.session_ttl_key)
    assert keys == ("QRMI_IBM_QCS_SESSION_MODE", "QRMI_IBM_QCS_SESSION_MAX_TTL")
    assert set(keys) <= qcs.known_config
    pasqal = profile(ResourceType.PASQAL_CLOUD)
    assert (pasqal.session_mode_key, pasqal.session_ttl_key) == (None, None)


def test_cdi_spec_is_atomic_private_and_removable(tmp_path: Path) -> None:
    cdi = CdiWriter(tmp_path / "cdi")
    dev = cdi.write("uid-1", {"B": "2", "A": "x=y"})
    assert dev == "quantum.example.com/qpu=uid-1"
    path = cdi.path("uid-1")
    assert path.name == "quantum.example.com-qpu_uid-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["cdiVersion"] == "0.6.0"
    assert doc["devices"][0]["containerEdits"]["env"] == ["A=x=y", "B=2"]
    cdi.write("uid-1", {"A": "new"})
    assert cdi.read_env("uid-1") == {"A": "new"}
    assert [p.name for p in (tmp_path / "cdi").iterdir()] == [path.name]  # no temp leftovers
    assert cdi.claims() == {"uid-1"}
    assert cdi.remove("uid-1") is True
    assert cdi.remove("uid-1") is False
    with pytest.raises(ValueError, match="cannot name a CDI device"):
        cdi.path("../etc/passwd")


def test_checkpoint_round_trip_boot_change_and_corruption(tmp_path: Path) -> None:
    store = StateStore(tmp_path, "boot-1")
    store.load()
    rec = ClaimRecord(
        uid="u",
        namespace="ns",
        name="c",
        boot_id="boot-1",
        devices=[DeviceRecord(request="r", pool="p", device="d-lane-0", backend="d", token="t")],
    )
    store.put(rec)
    store.close()
    again = StateStore(tmp_path, "boot-1")
    again.load()
    assert again.get("u") == rec
    again.close()
    rebooted = StateStore(tmp_path, "boot-2")
    rebooted.load()
    # Kept until recovery releases it: the store says which boot prepared it.
    assert [(c.uid, c.boot_id) for c in rebooted.claims()] == [("u", "boot-1")]
    rebooted.close()
    (tmp_path / CHECKPOINT_NAME).write_text('{"journal": "dra", "version": 7}\n')
    broken = StateStore(tmp_path, "boot-2")
    broken.load()
    assert broken.claims() == []
    assert len(list(tmp_path.glob(f"{CHECKPOINT_NAME}.corrupt-*"))) == 1


def test_a_version_2_journal_keeps_its_claims_and_is_rewritten_as_3(tmp_path: Path) -> None:
    """An upgrade from the driver before the native encoding: its canonical file (tokens
    held by prepared claims) must be read, not quarantined, and rewritten natively."""
    rec = ClaimRecord(
        uid="u",
        namespace="ns",
        name="c",
        boot_id="boot-1",
        phase=ClaimPhase.PREPARED,
        devices=[DeviceRecord(request="r", pool="p", device="d-lane-0", backend="d", token="t")],
    )
    (tmp_path / CHECKPOINT_NAME).write_bytes(
        json.dumps({"journal": "dra", "version": 2}).encode()
        + b"\n"
        + journal._line([["claim/u", Record(rec).model_dump(mode="json")]])
    )
    store = StateStore(tmp_path, "boot-1")
    assert store.load().quarantined is None
    assert store.get("u") == rec
    store.close()
    head, body = (tmp_path / CHECKPOINT_NAME).read_bytes().splitlines()
    assert json.loads(head)["version"] == JOURNAL_VERSION == 3
    assert body != journal._line([["claim/u", Record(rec).model_dump(mode="json")]]).rstrip()
    again = StateStore(tmp_path, "boot-1")
    again.load()
    assert again.get("u") == rec


def test_health_broadcaster_fans_out_changes_only() -> None:
    b = health_board()
    seen: list[int] = []
    cond = threading.Condition()

    def consume() -> None:
        for devices in b.stream():
            with cond:
                seen.append(len(devices))
                cond.notify_all()

    t = threading.Thread(target=consume)
    t.start()
    one = [DeviceHealth("p", "a", DeviceHealthStatus.HEALTHY, 1)]
    assert b.set(tuple(one)) is True
    assert b.set((DeviceHealth("p", "a", DeviceHealthStatus.HEALTHY, 2),)) is False  # same
    assert b.set((*one, DeviceHealth("p", "b", DeviceHealthStatus.UNKNOWN, 1))) is True
    with cond:
        assert cond.wait_for(lambda: seen[-1:] == [2], 5)
    b.close()
    t.join(5)
    assert not t.is_alive()


def test_health_status_and_taint_values() -> None:
    assert status_of(Health(False, "unknown", "not probed yet"), None) is DeviceHealthStatus.UNKNOWN
    assert status_of(Health(True, "online"), None) is DeviceHealthStatus.HEALTHY
    assert status_of(Health(True, "online"), "no Secret") is DeviceHealthStatus.UNHEALTHY
    assert unhealthy_taint(DRIVER, "offline").to_api() == {
        "key": f"{DRIVER}/unhealthy",
        "value": "offline",
        "effect": "NoSchedule",
    }
    assert unhealthy_taint(DRIVER, "weird status!").value == "weird-status"
    # Paused: the key says so, the value carries the vendor's reason as a label value.
    assert unhealthy_taint(DRIVER, "paused", "Cryostat warm-up (ETA 2h)").to_api() == {
        "key": f"{DRIVER}/paused",
        "value": "Cryostat-warm-up--ETA-2h",
        "effect": "NoSchedule",
    }
    long = unhealthy_taint(DRIVER, "paused", "maintenance: " + "x" * 100 + " é").value
    assert len(long) == 63
    assert long.startswith("maintenance--x")
    assert unhealthy_taint(DRIVER, "paused", "...").value == "paused"
    assert unhealthy_taint(DRIVER, "offline", "ignored").value == "offline"


def test_socket_names_are_per_instance() -> None:
    assert instance_id("5F0C2A6E-1111-2222") == "5f0c2a6e1111"
    assert len(instance_id("")) == 8
    paths = socket_paths(DRIVER, Path("/p"), Path("/r"), "abc")
    assert str(paths.registration) == f"/r/{DRIVER}-abc-reg.sock"
    assert str(paths.endpoint) == f"/p/{DRIVER}/dra-abc.sock"
