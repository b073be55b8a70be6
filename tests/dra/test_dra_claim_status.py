"""A prepared claim's ``status.devices``: what each device holds, never a credential nor a
bearer token, written in the background so that a slow or failing apiserver neither slows
nor fails NodePrepareResources. The driver runs over real gRPC with the fake kubelet and
the emulator through the real qrmi client; the status writer is a recorder that can hold or
fail writes (tests/e2e proves the writes on the real apiserver with the chart's RBAC)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from qpu_k8s.core.model import parse_backend
from qpu_k8s.core.vendors import token_fingerprint
from qpu_k8s.dra.agent import DraDriver
from qpu_k8s.dra.claims import status_write_error
from qpu_k8s.dra.claimstatus import StatusWriteError, device_status
from qpu_k8s.fakekubelet import ClaimRef, FakeDRAKubelet
from testsupport.dra import (
    NS,
    DraNode,
    StaticClaims,
    StatusRecorder,
    allocated_claim,
    ibm_model,
    params_config,
    pasqal_model,
    put_allocated_claim,
)
from testsupport.emulator import SECRETS
from testsupport.names import DRIVER
from testsupport.waiting import wait_for


@pytest.fixture
def claims() -> StaticClaims:
    return StaticClaims()


@pytest.fixture
def recorder() -> StatusRecorder:
    return StatusRecorder()


@pytest.fixture
def agent(node_env: DraNode, claims: StaticClaims, recorder: StatusRecorder) -> Iterator[DraDriver]:
    a = DraDriver(
        node_env.agent_config(claim_status_retry_seconds=0.05),
        claims=claims,
        publish_slices=False,
        status_writer=recorder,
    )
    a.start()
    yield a
    recorder.gate.set()
    a.stop()


def _writes(result: str) -> float:
    value = REGISTRY.get_sample_value("qpu_k8s_dra_claim_status_writes_total", {"result": result})
    return value or 0.0


def test_status_says_what_each_device_holds_and_no_credential(
    node_env: DraNode,
    claims: StaticClaims,
    agent: DraDriver,
    kubelet: FakeDRAKubelet,
    recorder: StatusRecorder,
) -> None:
    kubelet.wait_for_registration(DRIVER)
    ref = put_allocated_claim(
        claims,
        node_env.node,
        [("ibm", "ibm-torino-lane-1"), ("pasqal", "pasqal-fresnel-lane-0")],
        [params_config("ibm", sessionMode="batch", sessionMaxTtlSeconds=1800)],
    )
    before = time.time()
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    env = agent.cdi.read_env(ref.uid)
    token = env["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"]
    ibm, pasqal = recorder.wait_written(ref.uid)
    assert (ibm["driver"], ibm["pool"], ibm["device"]) == (
        DRIVER,
        node_env.node,
        "ibm-torino-lane-1",
    )
    assert ibm["conditions"][0]["type"] == "Ready"
    assert ibm["conditions"][0]["status"] == "True"
    assert ibm["conditions"][0]["reason"] == "SessionAcquired"
    data = ibm["data"]
    assert data["backend"] == "ibm-torino"
    assert data["resourceId"] == "fake_torino"
    assert data["sessionId"] == token  # a Qiskit Runtime session id: useless without the key
    session = node_env.emu.state.session(token)
    # The per-claim overrides are what the vendor got and what the status says.
    assert (data["sessionMode"], data["sessionMaxTtlSeconds"]) == ("batch", 1800)
    assert (session.mode, session.max_ttl) == ("batch", 1800)
    assert data["node"] == node_env.node
    # The queue as last probed: absent when status() reports no pending-job count (qrmi
    # 0.26 with the emulator's IBM API), never made up.
    state = agent.registry.get("ibm-torino") if agent.registry else None
    assert state is not None
    assert data.get("pendingJobsAtAcquire") == state.health.pending_jobs
    acquired = time.mktime(time.strptime(data["acquiredAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 1 <= acquired <= time.time() + 1
    # pasqal-cloud's acquire holds no session: no session fields at all.
    assert pasqal["conditions"][0]["reason"] == "Acquired"
    assert pasqal["data"]["holdsSession"] is False
    assert not {"sessionId", "sessionFingerprint", "sessionMode"} & set(pasqal["data"])
    blob = repr(recorder.written)
    assert not [s for s in SECRETS if s in blob]
    pasqal_token = env["FRESNEL_QRMI_JOB_ACQUISITION_TOKEN"]
    assert pasqal_token not in blob
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert not node_env.emu.state.session(token).is_open


def test_a_bearer_token_is_shown_only_as_a_fingerprint() -> None:
    """pasqal-local's warden takes no credentials, so its token alone acts on the session."""
    backend = parse_backend(
        {
            "name": "warden",
            "spec": {
                "resourceId": "FRESNEL",
                "type": "pasqal-local",
                "config": {"QRMI_WARDEN_URL": "http://127.0.0.1:1"},
                "lanes": 1,
            },
        }
    )
    token = "4f6c0b5e-2a51-4d1e-9a63-0f2c7d1b9e77"
    entry = device_status(
        driver=DRIVER,
        pool="p",
        device="warden-lane-0",
        backend=backend,
        token=token,
        acquired_at=0.0,
        node="n",
    )
    assert entry["data"]["sessionFingerprint"] == token_fingerprint(token)
    assert entry["data"]["sessionFingerprint"].startswith("sha256:")
    assert token not in repr(entry)
    assert "sessionId" not in entry["data"]
    # IBM's session id is shown as it is; Pasqal cloud holds no session.
    ibm = device_status(
        driver=DRIVER,
        pool="p",
        device="d",
        backend=ibm_model(),
        token=token,
        acquired_at=0.0,
        node="n",
        pending_jobs=3,
    )
    assert ibm["data"]["sessionId"] == token
    assert ibm["data"]["pendingJobsAtAcquire"] == 3
    assert ibm["data"]["sessionMode"] == "dedicated"
    cloud = device_status(
        driver=DRIVER,
        pool="p",
        device="d",
        backend=pasqal_model(),
        token=token,
        acquired_at=0.0,
        node="n",
    )
    assert token not in repr(cloud)


def test_a_slow_then_failing_status_write_never_holds_or_fails_the_prepare(
    node_env: DraNode,
    claims: StaticClaims,
    agent: DraDriver,
    kubelet: FakeDRAKubelet,
    recorder: StatusRecorder,
) -> None:
    kubelet.wait_for_registration(DRIVER)
    recorder.gate.clear()  # the apiserver does not answer
    recorder.fail_next = [
        StatusWriteError("HTTP 503: down", permanent=False, kind="unavailable"),
        StatusWriteError("HTTP 503: down", permanent=False, kind="unavailable"),
    ]
    unavailable = _writes("unavailable")
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
    out = kubelet.node_prepare_resources([ref])[ref.uid]
    assert out.error == ""  # answered while the status write hangs
    assert ref.uid not in recorder.written
    recorder.gate.set()
    written = recorder.wait_written(ref.uid)  # after two failures, retried with backoff
    assert recorder.attempts[ref.uid] == 3
    assert _writes("unavailable") == unavailable + 2
    assert written[0]["device"] == "ibm-manila-lane-0"
    assert agent.claim_status is not None
    assert agent.claim_status.written(ref.uid)
    # A repeated prepare (a second pod) does not write again what is written.
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    assert recorder.attempts[ref.uid] == 3
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert not list(node_env.emu.state.open_sessions("fake_manila"))


def test_a_refused_write_is_not_retried_until_the_next_prepare_and_unprepare_cancels(
    node_env: DraNode,
    claims: StaticClaims,
    agent: DraDriver,
    kubelet: FakeDRAKubelet,
    recorder: StatusRecorder,
) -> None:
    kubelet.wait_for_registration(DRIVER)
    forbidden = _writes("forbidden")
    recorder.fail_next = [StatusWriteError("HTTP 403: no", permanent=True, kind="forbidden")]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-0")])
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    recorder.wait_attempts(ref.uid, 1)
    wait_for(lambda: _writes("forbidden") == forbidden + 1, 5, "the refusal counted")
    assert agent.claim_status is not None
    assert agent.claim_status.needs(ref.uid)
    # The next prepare of the claim (the kubelet again, or a restarted driver) tries again.
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    recorder.wait_written(ref.uid)
    assert recorder.attempts[ref.uid] == 2

    # A write still being retried when the claim is unprepared is dropped, not written after.
    other = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-1")])
    recorder.fail_next = [
        StatusWriteError("HTTP 503", permanent=False, kind="unavailable") for _ in range(50)
    ]
    assert kubelet.node_prepare_resources([other])[other.uid].error == ""
    recorder.wait_attempts(other.uid, 1)
    assert not agent.claim_status.needs(other.uid)  # pending: retried with backoff
    assert kubelet.node_unprepare_resources([other]) == {other.uid: ""}
    assert agent.claim_status.needs(other.uid)  # nothing pending for it any more
    recorder.fail_next.clear()
    third = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-1")])
    assert kubelet.node_prepare_resources([third])[third.uid].error == ""
    recorder.wait_written(third.uid)
    assert other.uid not in recorder.written
    assert kubelet.node_unprepare_resources([third]) == {third.uid: ""}
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert not list(node_env.emu.state.open_sessions("fake_torino"))


def _api_error(status: int, body: dict[str, Any] | None) -> ApiException:
    err = ApiException(status=status, reason="x")
    err.body = json.dumps(body) if body is not None else None
    return err


def test_status_write_failures_are_told_apart() -> None:
    """The answers the real 1.37 apiserver gave (tests/e2e, the apiserver tier)."""
    denied = _api_error(
        422,
        {
            "kind": "Status",
            "reason": "Invalid",
            "message": 'ResourceClaim.resource.k8s.io "manila" is invalid: status.devices: '
            'Forbidden: changing status.devices requires resource="resourceclaims/driver"',
            "details": {"causes": [{"reason": "FieldValueForbidden", "field": "status.devices"}]},
        },
    )
    got = status_write_error(denied)
    assert (got.kind, got.permanent) == ("forbidden", True)
    assert "resourceclaims/driver" in str(got)
    recreated = _api_error(
        422,
        {
            "message": 'metadata.uid: Invalid value: "x": field is immutable',
            "details": {"causes": [{"reason": "FieldValueInvalid", "field": "metadata.uid"}]},
        },
    )
    assert (status_write_error(recreated).kind, status_write_error(recreated).permanent) == (
        "invalid",
        True,
    )
    assert status_write_error(_api_error(404, None)).kind == "gone"
    for transient in (500, 503, 429):
        got = status_write_error(_api_error(transient, {"message": "later"}))
        assert (got.kind, got.permanent) == ("unavailable", False)


def test_admin_access_acquires_nothing_and_reads_metadata_only(
    node_env: DraNode,
    claims: StaticClaims,
    agent: DraDriver,
    kubelet: FakeDRAKubelet,
    recorder: StatusRecorder,
) -> None:
    """``adminAccess: true`` on a result: no session, the read-only admin env, status says
    so; a normal request of the same claim on another backend is acquired as usual."""
    kubelet.wait_for_registration(DRIVER)
    uid = str(uuid.uuid4())
    claim = allocated_claim(
        NS,
        "monitor",
        uid,
        [("watch", "ibm-torino-lane-0"), ("run", "pasqal-fresnel-lane-0")],
        node_env.node,
    )
    claim["status"]["allocation"]["devices"]["results"][0]["adminAccess"] = True
    claims.put_claim(claim)
    ref = ClaimRef(NS, uid, "monitor")
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    assert node_env.emu.state.sessions("fake_torino") == []  # nothing acquired
    env = agent.cdi.read_env(ref.uid)
    assert env["QPU_ADMIN_ACCESS"] == "true"
    assert (env["QPU_ADMIN_RESOURCES"], env["QPU_ADMIN_TYPES"]) == (
        "fake_torino",
        "ibm-quantum-compute-service",
    )
    assert env["fake_torino_QPU_BACKEND"] == "ibm-torino"
    assert env["fake_torino_QPU_DEVICE"] == "ibm-torino-lane-0"
    assert env["fake_torino_QPU_STATUS"] == "online"
    metadata = json.loads(env["fake_torino_QPU_METADATA"])
    assert metadata["resourceType"] == "ibm-quantum-compute-service"
    assert metadata["config"]["QRMI_IBM_QCS_ENDPOINT"].startswith("http://127.0.0.1:")
    # No token, no credential for the admin device: only the normal request's contract.
    assert not [k for k in env if k.startswith("fake_torino_QRMI_")]
    assert env["QRMI_JOB_QPU_RESOURCES"] == "FRESNEL"
    assert env["FRESNEL_QRMI_JOB_ACQUISITION_TOKEN"]
    assert not [s for s in SECRETS if any(s in v for k, v in env.items() if "_QPU_" in k)]
    admin, normal = recorder.wait_written(ref.uid)
    assert admin["device"] == "ibm-torino-lane-0"
    assert admin["conditions"][0]["reason"] == "AdminAccess"
    assert admin["data"]["adminAccess"] is True
    assert admin["data"]["holdsSession"] is False
    assert not {"sessionId", "sessionFingerprint", "acquiredAt"} & set(admin["data"])
    assert normal["conditions"][0]["reason"] == "Acquired"
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert node_env.emu.state.sessions("fake_torino") == []
    assert not agent.cdi.exists(ref.uid)
