"""Acquire before bind, the driver's half, over real gRPC with the fake kubelet and the
emulator: a claim acquired ahead of binding (what the claim watcher of :mod:`qpu_k8s.dra.
binding` calls) is prepared without a second acquire, survives a driver restart, and is
given back when its pod never comes. The watcher's decisions against the real scheduler
are in ``tests/e2e/test_e2e_acquire_before_bind.py``."""

from __future__ import annotations

from typing import Any

import pytest

from qpu_k8s.dra.agent import DraDriver
from qpu_k8s.dra.binding import acquires_before_bind
from qpu_k8s.dra.state import ClaimPhase
from qpu_k8s.fakekubelet import FakeDRAKubelet
from qpu_k8s.resourceslices.policy import UnhealthyMode, binding_conditions, lane_devices
from testsupport.dra import DraNode, StaticClaims, ibm_model, put_allocated_claim
from testsupport.names import DRIVER
from testsupport.waiting import wait_for

TOKEN = "fake_manila_QRMI_JOB_ACQUISITION_TOKEN"


@pytest.fixture
def claims() -> StaticClaims:
    return StaticClaims()


def start(node_env: DraNode, claims: StaticClaims) -> DraDriver:
    agent = DraDriver(node_env.agent_config(), claims=claims, publish_slices=False)
    agent.start()
    return agent


def _open(emu: Any) -> list[str]:
    return [s.id for s in emu.state.open_sessions("fake_manila")]


def test_acquired_claim_is_prepared_with_its_session_and_no_second_acquire(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet
) -> None:
    agent = start(node_env, claims)
    try:
        assert agent.preparer is not None
        ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
        rec = agent.preparer.acquire(ref.namespace, ref.name, ref.uid)
        assert rec is not None
        assert rec.phase is ClaimPhase.ACQUIRED
        assert rec.acquired_before_bind
        (token,) = [d.token for d in rec.devices]
        assert _open(node_env.emu) == [token]
        assert not agent.cdi.exists(ref.uid)  # no pod may see it before binding
        # Asked again (a repeated event): the same record, nothing acquired.
        again = agent.preparer.acquire(ref.namespace, ref.name, ref.uid)
        assert again is not None
        assert again.devices[0].token == token
        kubelet.wait_for_registration(DRIVER)
        assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
        assert agent.cdi.read_env(ref.uid)[TOKEN] == token
        assert _open(node_env.emu) == [token]
        assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
        assert _open(node_env.emu) == []
    finally:
        agent.stop()


def test_acquired_claim_survives_a_restart_and_is_given_back_when_its_pod_never_comes(
    node_env: DraNode, claims: StaticClaims
) -> None:
    first = start(node_env, claims)
    try:
        assert first.preparer is not None
        ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
        rec = first.preparer.acquire(ref.namespace, ref.name, ref.uid)
        assert rec is not None
    finally:
        first.stop()
    second = start(node_env, claims)
    try:
        assert second.preparer is not None
        assert second.store is not None
        kept = second.store.get(ref.uid)
        assert kept is not None
        assert kept.phase is ClaimPhase.ACQUIRED  # the relist decides, not the start-up
        assert _open(node_env.emu) == [rec.devices[0].token]
        assert second.preparer.give_back(ref.uid, "the claim was deleted before binding")
        wait_for(lambda: _open(node_env.emu) == [], 10, "the owed release paid")
        assert second.store.get(ref.uid) is None
        assert not second.preparer.give_back(ref.uid, "twice")
    finally:
        second.stop()


def test_only_opted_in_node_bound_devices_carry_binding_conditions() -> None:
    backend = ibm_model()
    assert not acquires_before_bind(backend, default=False)
    assert acquires_before_bind(backend, default=True)
    opted = backend.model_copy(
        update={"spec": backend.spec.model_copy(update={"acquire_before_bind": True})}
    )
    assert acquires_before_bind(opted, default=False)
    assert not acquires_before_bind(ibm_model(access="shared"), default=True)
    plain, waiting = (
        lane_devices(
            backend,
            {"qubits": 5},
            usable=True,
            why="",
            driver=DRIVER,
            mode=UnhealthyMode.WITHDRAW,
            acquire_before_bind=on,
        )[0].to_api()
        for on in (False, True)
    )
    assert "bindingConditions" not in plain
    acquired, failed = binding_conditions(DRIVER)
    assert waiting["bindingConditions"] == [acquired]
    assert waiting["bindingFailureConditions"] == [failed]
