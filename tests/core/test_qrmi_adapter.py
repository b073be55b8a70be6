"""The QRMI adapter over the real qrmi client against the emulator: the paper's lifecycle,
deadlines, typed errors and health, with no credential in any message."""

from __future__ import annotations

import json
import time

import pytest
import qrmi

from qpu_k8s.core import errors
from qpu_k8s.core.model import QuantumBackend, parse_backend
from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient, TaskState
from qpu_k8s.emulator import Emulator
from testsupport.emulator import bell_isa
from testsupport.emulator import ibm_backend as emulator_backend
from testsupport.emulator import sampler_payload as isa_sampler_payload
from testsupport.waiting import wait_for


def ibm_backend(emu: Emulator, name: str = "fake_manila") -> QuantumBackend:
    return parse_backend(emulator_backend(emu, name.replace("_", "-"), name, secret_name="ibm"))


def sampler_payload(client: QrmiClient, shots: int = 200) -> object:
    from qrmi.primitives.ibm import get_backend

    res = qrmi.QuantumResource.from_config(
        client.backend.spec.resource_id,
        qrmi.ResourceType.IBMQuantumComputeService,
        client._config,
    )
    return isa_sampler_payload(bell_isa(get_backend(res)), shots)


def test_lifecycle_acquire_task_release(emu: Emulator) -> None:
    client = QrmiClient(ibm_backend(emu), emu.ibm_credentials(), timeouts=CallTimeouts.uniform(20))
    assert client.health().healthy
    token = client.acquire()
    (session,) = emu.state.open_sessions("fake_manila")
    assert session.id == token
    task = client.task_start(sampler_payload(client), token=token)
    deadline = time.monotonic() + 60
    while (state := client.task_status(task, token=token)) not in {
        TaskState.COMPLETED,
        TaskState.FAILED,
    }:
        assert time.monotonic() < deadline, f"task stuck in {state}"
        time.sleep(0.05)
    assert state is TaskState.COMPLETED
    result = client.task_result(task, token=token)
    assert "results" in result or "__type__" in result
    assert emu.state.job(task) is not None
    assert emu.state.job(task).session_id == token  # type: ignore[union-attr]
    client.release(token)
    assert emu.state.open_sessions("fake_manila") == []
    assert emu.state.session(token).closed_by == "release"  # type: ignore[union-attr]


def test_target_and_metadata(emu: Emulator) -> None:
    client = QrmiClient(ibm_backend(emu, "fake_nairobi"), emu.ibm_credentials())
    target = client.target()
    assert target["configuration"]["n_qubits"] == 7
    assert client.metadata()["backend_name"] == "fake_nairobi"


def test_hang_fails_within_deadline(emu: Emulator) -> None:
    client = QrmiClient(ibm_backend(emu), emu.ibm_credentials(), timeouts=CallTimeouts.uniform(0.5))
    emu.set_fault("hang")
    t0 = time.monotonic()
    with pytest.raises(errors.QpuTimeoutError, match="acquire"):
        client.acquire()
    assert time.monotonic() - t0 < 2.5
    health = client.health()
    assert (health.healthy, health.status) == (False, "timeout")
    assert time.monotonic() - t0 < 5
    emu.clear_faults()
    assert client.health().healthy, "a new call after a timeout must not reuse the stuck object"


def test_bad_credentials_are_a_clear_auth_error(emu: Emulator) -> None:
    bad = "definitely-wrong-apikey"
    client = QrmiClient(
        ibm_backend(emu), {"QRMI_IBM_QCS_IAM_APIKEY": bad}, timeouts=CallTimeouts.uniform(10)
    )
    with pytest.raises(errors.QpuAuthError) as err:
        client.acquire()
    assert bad not in str(err.value)
    health = client.health()
    assert (health.healthy, health.status) == (False, "auth")
    assert bad not in health.reason
    assert emu.state.open_sessions() == []


def test_vendor_5xx_and_offline(emu: Emulator) -> None:
    client = QrmiClient(ibm_backend(emu), emu.ibm_credentials(), timeouts=CallTimeouts.uniform(10))
    emu.set_fault("error5xx", "fake_manila")
    with pytest.raises(errors.QpuUnavailableError):
        client.acquire()
    assert not client.health().healthy
    emu.clear_faults()
    emu.set_online("fake_manila", False, reason="calibration")
    health = client.health()
    assert (health.healthy, health.status) == (False, "offline")
    assert "calibration" in health.reason
    emu.set_online("fake_manila", True)
    assert client.health().healthy


def test_unreachable_vendor(emu: Emulator) -> None:
    backend = parse_backend(
        {
            "name": "nowhere",
            "spec": {
                "resourceId": "fake_manila",
                "type": "ibm-quantum-compute-service",
                "config": {
                    **emu.ibm_config("fake_manila"),
                    "QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:9/api/v1",
                },
                "credentialsSecretRef": {"name": "ibm"},
            },
        }
    )
    client = QrmiClient(backend, emu.ibm_credentials(), timeouts=CallTimeouts.uniform(5))
    health = client.health()
    assert (health.healthy, health.status) == (False, "unreachable")


def test_pasqal_lifecycle(emu: Emulator) -> None:
    backend = parse_backend(
        {
            "name": "fresnel",
            "spec": {
                "resourceId": "FRESNEL",
                "type": "pasqal-cloud",
                "config": emu.pasqal_config("FRESNEL"),
                "credentialsSecretRef": {"name": "pasqal"},
            },
        }
    )
    client = QrmiClient(backend, emu.pasqal_credentials(), timeouts=CallTimeouts.uniform(10))
    assert client.health().healthy
    token = client.acquire()  # pasqal-cloud has no sessions: a dummy token, no HTTP call
    assert token
    assert "specs" in json.dumps(client.target()) or client.target()
    client.release(token)


def test_two_acquisitions_never_share_a_session(emu: Emulator) -> None:
    """qrmi returns the same session for a second acquire() on one object: we must not."""
    client = QrmiClient(ibm_backend(emu), emu.ibm_credentials(), timeouts=CallTimeouts.uniform(10))
    assert client.health().healthy  # warms the pool with an object
    tokens = [client.acquire() for _ in range(3)]
    assert len(set(tokens)) == 3
    assert {s.id for s in emu.state.open_sessions("fake_manila")} == set(tokens)
    for t in tokens:
        client.release(t)
    assert emu.state.open_sessions("fake_manila") == []
    # Released objects are reused for the next acquisition, which is again a new session.
    again = client.acquire()
    assert again not in tokens
    client.release(again)


def test_acquire_that_takes_the_last_object_leaves_a_warm_spare(emu: Emulator) -> None:
    """With every object holding a session, the next acquire must not fetch a token itself."""
    client = QrmiClient(ibm_backend(emu), emu.ibm_credentials(), timeouts=CallTimeouts.uniform(10))
    first = client.acquire()  # builds its object, then a spare in the background
    spare = wait_for(lambda: list(client._idle), 10, "a warm spare")[0]
    second = client.acquire()
    assert client._held[second] is spare  # the spare was used, not a new object
    assert second != first
    wait_for(lambda: client._idle, 10, "the next spare")
    for t in (first, second):
        client.release(t)
    assert emu.state.open_sessions("fake_manila") == []


def test_a_spare_whose_warm_up_fails_is_dropped(emu: Emulator) -> None:
    """A spare that could not answer a status call would fail the acquire that takes it."""
    client = QrmiClient(ibm_backend(emu), emu.ibm_credentials(), timeouts=CallTimeouts.uniform(10))
    emu.set_fault("error5xx", "fake_manila")
    client._refill()
    wait_for(lambda: not client._refilling, 10, "the failed refill to end")
    assert client._idle == []
    emu.clear_faults()
    client._refill()
    wait_for(lambda: client._idle, 10, "a spare once the vendor answers")
