"""One device per QPU with its lanes as consumable capacity (``--device-model capacity``):
the slice shape (checked against the 1.37 OpenAPI schema), and the driver over real gRPC
with the fake kubelet and the emulator preparing shares of one device: each claim its own
session, answered with its ``shareID``; a share of some lanes opens IBM ``batch``, one of
all lanes ``dedicated``; kept across a restart. The real scheduler's part (two shared
claims coexist, an exclusive one waits) is ``tests/e2e/test_e2e_capacity.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from qpu_k8s.cli.commands import build_parser
from qpu_k8s.dra import cli
from qpu_k8s.dra.agent import DraDriver, DraDriverConfig
from qpu_k8s.dra.claimstatus import device_status
from qpu_k8s.fakekubelet import ClaimRef, FakeDRAKubelet
from qpu_k8s.resourceslices.build import PoolScope, build_slices
from qpu_k8s.resourceslices.policy import DeviceModel, UnhealthyMode, lane_devices
from testsupport.dra import NS, DraNode, StaticClaims, allocated_claim, ibm_model, params_config
from testsupport.dra import validate as validate_schema
from testsupport.names import DRIVER

TORINO = "ibm-torino"  # node_backends: 2 lanes, fake_torino


def _devices(model: DeviceModel, *, usable: bool = True) -> list[Any]:
    return lane_devices(
        ibm_model(TORINO, lanes=2),
        {"qubits": 133, "lane": 0},
        usable=usable,
        why="offline",
        driver=DRIVER,
        mode=UnhealthyMode.TAINT,
        model=model,
    )


def test_capacity_model_publishes_one_device_with_the_lanes_as_capacity() -> None:
    (dev,) = _devices(DeviceModel.CAPACITY)
    api = dev.to_api()
    assert api["name"] == TORINO
    assert api["allowMultipleAllocations"] is True
    assert api["capacity"] == {
        "lanes": {
            "value": "2",
            "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": "2"}},
        }
    }
    assert "lane" not in api["attributes"]  # a lane is no longer a device
    (tainted,) = _devices(DeviceModel.CAPACITY, usable=False)
    assert tainted.to_api()["taints"][0]["key"] == f"{DRIVER}/unhealthy"
    (obj,) = build_slices(DRIVER, "node-a", PoolScope.node("node-a"), [dev], 1)
    validate_schema(obj, "1.37.0")
    # The default model is unchanged: one device per lane, no capacity.
    lanes = [d.to_api() for d in _devices(DeviceModel.LANES)]
    assert [d["name"] for d in lanes] == [f"{TORINO}-lane-0", f"{TORINO}-lane-1"]
    assert not any("capacity" in d or "allowMultipleAllocations" in d for d in lanes)


def test_device_model_flag_defaults_to_lanes_and_names_the_fix_for_a_typo() -> None:
    def config(*flags: str) -> object:
        return cli._config(build_parser().parse_args(["dra-plugin", *flags]))

    default = config()
    assert isinstance(default, DraDriverConfig)
    assert default.device_model is DeviceModel.LANES
    chosen = config("--device-model", "capacity")
    assert isinstance(chosen, DraDriverConfig)
    assert chosen.device_model is DeviceModel.CAPACITY
    with pytest.raises(SystemExit, match="--device-model: 'lane'; use lanes or capacity"):
        config("--device-model", "lane")


@pytest.fixture
def claims() -> StaticClaims:
    return StaticClaims()


@pytest.fixture
def agent(node_env: DraNode, claims: StaticClaims) -> Iterator[DraDriver]:
    a = DraDriver(node_env.agent_config(), claims=claims, publish_slices=False)
    a.start()
    yield a
    a.stop()


def share(
    claims: StaticClaims,
    pool: str,
    lanes: str | None,
    config: list[dict[str, Any]] | None = None,
) -> tuple[ClaimRef, str]:
    """A claim allocated a share of the QPU device as the 1.37 scheduler leaves it: a
    ``shareID`` and, when the request asked for lanes, ``consumedCapacity``."""
    uid, share_id = str(uuid.uuid4()), str(uuid.uuid4())
    name = f"claim-{uid[:8]}"
    claim = allocated_claim(NS, name, uid, [("qpu", TORINO)], pool, config)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    result["shareID"] = share_id
    if lanes is not None:
        result["consumedCapacity"] = {"lanes": lanes}
    claims.put_claim(claim)
    return ClaimRef(NS, uid, name), share_id


def _mode(node_env: DraNode, agent: DraDriver, uid: str) -> str:
    token = agent.cdi.read_env(uid)["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"]
    session = node_env.emu.state.session(token)
    assert session is not None
    assert session.is_open
    return str(session.mode)


def test_shares_of_one_qpu_device_get_a_session_each_in_the_mode_of_the_share(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    kubelet.wait_for_registration(DRIVER)
    pool = node_env.node
    a, share_a = share(claims, pool, "1")
    b, share_b = share(claims, pool, None)  # no lanes asked: the published default, 1
    answers = kubelet.node_prepare_resources([a, b])
    for ref, share_id in ((a, share_a), (b, share_b)):
        assert answers[ref.uid].error == ""
        (dev,) = answers[ref.uid].devices
        assert (dev.pool_name, dev.device_name, dev.share_id) == (pool, TORINO, share_id)
        assert _mode(node_env, agent, ref.uid) == "batch"
    tokens = {agent.cdi.read_env(r.uid)["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"] for r in (a, b)}
    assert len(tokens) == 2  # two claims on one device: two sessions

    # The checkpoint keeps the share: a restarted driver answers with it.
    agent.stop()
    again = DraDriver(node_env.agent_config(), claims=claims, publish_slices=False)
    again.start()
    try:
        kubelet.wait_for_registration(DRIVER, count=2)
        (dev,) = kubelet.node_prepare_resources([a])[a.uid].devices
        assert dev.share_id == share_a
        assert kubelet.node_unprepare_resources([a, b]) == {a.uid: "", b.uid: ""}

        # All lanes: exclusive, a dedicated session; a claim's own sessionMode still wins.
        whole, _ = share(claims, pool, "2")
        assert kubelet.node_prepare_resources([whole])[whole.uid].error == ""
        assert _mode(node_env, again, whole.uid) == "dedicated"
        own, _ = share(claims, pool, "2", [params_config("qpu", sessionMode="batch")])
        assert kubelet.node_prepare_resources([own])[own.uid].error == ""
        assert _mode(node_env, again, own.uid) == "batch"
        assert kubelet.node_unprepare_resources([whole, own]) == {whole.uid: "", own.uid: ""}

        # More lanes than the QPU has: refused, naming the request field, nothing acquired.
        bad, _ = share(claims, pool, "3")
        error = kubelet.node_prepare_resources([bad])[bad.uid].error
        assert "consumes '3' lanes" in error
        assert "capacity.requests.lanes" in error
    finally:
        again.stop()
    assert list(node_env.emu.state.open_sessions("fake_torino")) == []


def test_claim_status_of_a_share_names_it() -> None:
    """The apiserver keys ``status.devices`` of a shared device by (driver, pool, device,
    shareID): an entry without the share would not match the allocation."""
    entry = device_status(
        driver=DRIVER,
        pool="node-a",
        device=TORINO,
        backend=ibm_model(TORINO, lanes=2),
        token="s-1",
        acquired_at=0.0,
        node="node-a",
        share_id="share-1",
        lanes=2,
    )
    assert entry["shareID"] == "share-1"
    assert entry["data"]["lanes"] == 2
    plain = device_status(
        driver=DRIVER,
        pool="node-a",
        device=f"{TORINO}-lane-0",
        backend=ibm_model(TORINO),
        token="s-2",
        acquired_at=0.0,
        node="node-a",
    )
    assert "shareID" not in plain
    assert "lanes" not in plain["data"]
