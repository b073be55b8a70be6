"""Two DRA driver pods on one node: the rolling update (maxSurge 1) of the chart's DaemonSet.

Both pods mount the same state directory. The kubelet sends a claim's calls to the newest
registered one, but a call already in flight at the old one, or a retry, can reach either.
Whatever order the calls come in, and whichever of the two dies in the middle, no session
may be released twice, none may leak, the state may never be corrupted, and a claim is
acquired once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from qpu_k8s.dra.state import CHECKPOINT_NAME
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import ClaimRef, FakeDRAKubelet
from qpu_k8s.fakekubelet.dra import DRAPluginClient
from testsupport.dra import DraNode, StartDra
from testsupport.emulator import open_tokens, release_requests
from testsupport.faults import ibm
from testsupport.names import DRIVER
from testsupport.waiting import wait_for

TOKEN = "fake_manila_QRMI_JOB_ACQUISITION_TOKEN"
LANES = 4


def _prepare_until_done(client: DRAPluginClient, ref: ClaimRef) -> str:
    """Prepare as the kubelet does: retry while the other instance holds the claim."""

    def attempt() -> str | None:
        result = client.node_prepare_resources([ref])[ref.uid]
        if result.error:
            assert "is being prepar" in result.error, result.error  # only 'busy' is expected
            return None
        return result.devices[0].cdi_device_ids[0]

    return wait_for(attempt, 20, f"prepare of {ref.uid}")


def _unprepare_until_done(client: DRAPluginClient, ref: ClaimRef) -> None:
    def attempt() -> bool | None:
        error = client.node_unprepare_resources([ref])[ref.uid]
        if error:
            assert "is being" in error, error
            return None
        return True

    wait_for(attempt, 20, f"unprepare of {ref.uid}")


def test_two_driver_pods_share_one_node_without_double_release_or_leak(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, lanes=8)])
    old = dra_process()
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    new = dra_process()
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    first, second = (DRAPluginClient(r) for r in dra_kubelet.registrations[:2])
    refs = [ClaimRef(*dra_node.claim([("qpu", f"ibm-manila-lane-{i}")])) for i in range(LANES)]

    # Each claim prepared through both pods at once (an in-flight call and a retry).
    barrier = threading.Barrier(2 * LANES)

    def prepare(client: DRAPluginClient, ref: ClaimRef) -> str:
        barrier.wait(10)
        return _prepare_until_done(client, ref)

    with ThreadPoolExecutor(2 * LANES) as pool:
        done = [(ref, pool.submit(prepare, c, ref)) for ref in refs for c in (first, second)]
        answers: dict[str, set[str]] = {}
        for ref, fut in done:
            answers.setdefault(ref.uid, set()).add(fut.result(30))
    assert all(len(ids) == 1 for ids in answers.values()), answers  # the same CDI device
    tokens = {ref.uid: dra_node.cdi_env(ref.uid)[TOKEN] for ref in refs}
    assert len(set(tokens.values())) == LANES
    assert open_tokens(emu) == set(tokens.values())  # acquired once per claim: no extra

    # The old pod dies in the middle of things; the new one unprepares everything, some
    # claims twice over, while a retry of the same unprepare goes to the old one first.
    with ThreadPoolExecutor(2 * LANES) as pool:
        futs = [pool.submit(_unprepare_until_done, second, ref) for ref in refs]
        futs += [pool.submit(_unprepare_until_done, first, ref) for ref in refs[:2]]
        old.stop()  # SIGKILL
        for fut in futs[:LANES]:
            fut.result(30)
        for fut in futs[LANES:]:
            fut.exception(30)  # the old pod's calls may fail as it died: the kubelet retries
    for ref in refs:
        _unprepare_until_done(second, ref)  # idempotent, also after the other's death

    wait_for(lambda: not open_tokens(emu), 10, "every session closed")
    counts = {t: release_requests(emu, t) for t in tokens.values()}
    assert set(counts.values()) == {1}, counts  # released exactly once each
    state = dra_node.checkpoint()
    assert state == {"claims": {}, "owed": {}}
    assert not list(dra_node.state_dir.glob(f"{CHECKPOINT_NAME}.corrupt-*"))
    assert not list(dra_node.cdi_dir.glob("*.json"))
    new.stop()


def test_a_claim_half_prepared_by_a_dead_pod_is_cleaned_by_the_other_one(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    """The old pod dies between the vendor's answer and PREPARED; the live pod finishes the
    job when the kubelet retries there: the orphan released once, the claim prepared anew."""
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, lanes=2)])
    survivor = dra_process()
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    doomed = dra_process(QPU_K8S_FAULT_KILL_AT="after-acquire-recorded")
    dra_kubelet.wait_for_registration(DRIVER, timeout=20, count=2)
    live, dying = (DRAPluginClient(r) for r in dra_kubelet.registrations[:2])
    ref = ClaimRef(*dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    with pytest.raises(grpc.RpcError):  # the pod is SIGKILLed inside the call
        dying.node_prepare_resources([ref])
    assert doomed.wait_exit() == -9
    (orphan,) = open_tokens(emu)
    assert dra_node.checkpoint()["claims"][ref.uid]["phase"] == "preparing"

    _prepare_until_done(live, ref)
    token = dra_node.cdi_env(ref.uid)[TOKEN]
    assert token != orphan
    wait_for(lambda: orphan not in open_tokens(emu), 10, "the orphan released")
    assert release_requests(emu, orphan) == 1
    _unprepare_until_done(live, ref)
    wait_for(lambda: not open_tokens(emu), 10, "every session closed")
    assert release_requests(emu, token) == 1
    survivor.stop()
