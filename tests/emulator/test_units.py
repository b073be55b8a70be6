"""Pure pieces of the emulator: tokens, fault registry, state, and raw HTTP edge cases."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

from qpu_k8s.emulator import Emulator, Fault, FaultKind, SessionRecord
from qpu_k8s.emulator.auth import TokenIssuer, bearer
from qpu_k8s.emulator.faults import FaultRegistry
from qpu_k8s.emulator.state import EmulatorState
from testsupport.emulator import qrmi_resource


def test_tokens_are_jwt_shaped_signed_and_scoped() -> None:
    import jwt  # what ibm-cloud-sdk-core and pasqal-cloud decode tokens with

    issuer = TokenIssuer(ttl_seconds=60)
    token = issuer.issue("me", "ibm").access_token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60
    assert issuer.verify(token, "ibm")
    assert not issuer.verify(token, "pasqal")  # audience-bound
    assert not TokenIssuer(60).verify(token, "ibm")  # another process's key
    head, body, _ = token.split(".")
    assert not issuer.verify(f"{head}.{body}.AAAA", "ibm")
    assert not TokenIssuer(-1).verify(TokenIssuer(-1).issue("me", "ibm").access_token, "ibm")
    assert bearer("Bearer abc") == "abc"
    assert bearer("Basic abc") is None


def test_fault_registry_scoping() -> None:
    faults = FaultRegistry()
    faults.set(Fault(FaultKind.SLOW, seconds=1))
    faults.set(Fault(FaultKind.SLOW, "fake_manila", seconds=2))
    assert faults.find(FaultKind.SLOW, "fake_manila").seconds == 2  # type: ignore[union-attr]
    assert faults.find(FaultKind.SLOW, "fake_lagos").seconds == 1  # type: ignore[union-attr]
    assert faults.find_scoped(FaultKind.SLOW, "fake_lagos") is None
    assert faults.clear(FaultKind.SLOW, "fake_manila") == 1
    assert faults.clear() == 1
    assert faults.active() == []


def test_state_wait_until_wakes_on_change() -> None:
    state = EmulatorState()
    rec = SessionRecord(id="s1", backend="b", mode="dedicated", max_ttl=10, created_at=0.0)
    threading.Timer(0.1, state.add_session, args=(rec,)).start()
    started = time.monotonic()
    assert state.wait_until(lambda s: s.session("s1") is not None, timeout=5)
    assert time.monotonic() - started < 2
    assert not state.wait_until(lambda s: s.session("s2") is not None, timeout=0.05)
    assert state.session_counts() == {"b": {"open": 1, "closed": 0}}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_gzip_batch_body_and_project_check(emu: Emulator) -> None:
    token = emu.pasqal_credentials()["QRMI_PASQAL_CLOUD_AUTH_TOKEN"]
    from pulser import Register, Sequence
    from pulser.devices import AnalogDevice

    seq = Sequence(Register.from_coordinates([(0, 0)], prefix="q"), AnalogDevice)
    body = {
        "sequence_builder": seq.to_abstract_repr(),
        "jobs": [{"runs": 5}],
        "device_type": "EMU_MPS",
        "project_id": "emulator-project",
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    url = f"{emu.url}/core-fast/api/v1/batches"
    status, text = _post(url, gzip.compress(json.dumps(body).encode()), headers)
    assert status == 200, text
    assert json.loads(text)["data"]["jobs"][0]["runs"] == 5
    status, text = _post(
        url,
        json.dumps({**body, "project_id": "other"}).encode(),
        {**headers, "Content-Encoding": "identity"},
    )
    assert status == 403
    assert "project_id" in text


def test_iam_refuses_unknown_key_like_ibm(emu: Emulator) -> None:
    status, text = _post(
        f"{emu.url}/identity/token",
        b"grant_type=x&apikey=nope",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400
    assert "BXNIM0415E" in text
    assert "nope" not in text


def test_expired_session_is_closed(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila", QRMI_IBM_QCS_SESSION_MAX_TTL="1")
    token = res.acquire()
    rec = emu.state.session(token)
    assert rec is not None
    assert rec.max_ttl == 1
    assert emu.state.wait_until(lambda s: not s.session(token).is_open, timeout=5)
    assert emu.state.session(token).closed_by == "expired"  # type: ignore[union-attr]


def test_no_credential_in_debug_logs(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    res = qrmi_resource(emu, "fake_manila")
    res.release(res.acquire())
    qrmi_resource(emu, "FRESNEL").target()
    qrmi_resource(emu, "fake_manila", QRMI_IBM_QCS_IAM_APIKEY="wrong-key-123").target()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /api/v1/sessions" in text
    for secret in (emu.config.first_api_key, emu.config.first_pasqal_token, "wrong-key-123"):
        assert secret not in text


def test_backends_list_shape_follows_the_api_version(emu: Emulator) -> None:
    status, text = _post(
        f"{emu.url}/identity/token",
        f"apikey={emu.config.first_api_key}".encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    headers = {
        "Authorization": f"Bearer {json.loads(text)['access_token']}",
        "Service-CRN": emu.config.service_crn,
    }

    def devices(extra: dict[str, str]) -> list[object]:
        req = urllib.request.Request(f"{emu.url}/api/v1/backends", headers={**headers, **extra})
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: list[object] = json.loads(resp.read())["devices"]
            return result

    assert devices({}) == ["fake_manila", "fake_nairobi", "fake_lagos", "fake_torino"]
    [first, *_] = devices({"IBM-API-Version": "2025-01-01"})
    assert first == {
        "name": "fake_manila",
        "status": {"name": "online", "reason": "available"},
        "is_simulator": False,
        "qubits": 5,
        "processor_type": {"family": "Falcon", "revision": "5.11"},
        "queue_length": 0,
        "wait_time_seconds": {"p50": 0, "p95": 0},
    }
    req = urllib.request.Request(f"{emu.url}/api/v1/backends")  # no token
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401
