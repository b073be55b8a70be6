"""Fault switches, observed through the real qrmi client."""

from __future__ import annotations

import time

import pytest
import qrmi

from qpu_k8s.emulator import Emulator, running_emulator
from testsupport.emulator import Call, qrmi_resource


def test_hang_blocks_the_call_and_stop_is_prompt() -> None:
    with running_emulator() as emu:
        res = qrmi_resource(emu, "fake_manila")
        assert res.status().status == qrmi.ResourceStatusCode.Online  # token cached
        emu.set_fault("hang")
        call = Call(res.status)
        # Our own deadline: qrmi has no client timeout and would wait forever.
        assert not call.wait(1.0), "the call returned although the server hangs"
        started = time.monotonic()
    stop_seconds = time.monotonic() - started
    assert stop_seconds < 3.0
    # The dropped connection ends the blocked call with an error, not a hang.
    assert call.wait(5.0)
    assert isinstance(call.error, qrmi.QrmiError)


def test_hang_cleared_lets_the_call_finish(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila")
    res.status()
    emu.set_fault("hang", "fake_manila")
    call = Call(res.status)
    assert not call.wait(0.5)
    emu.clear_faults("hang")
    assert call.wait(5.0)
    assert call.error is None
    assert call.result.status == qrmi.ResourceStatusCode.Online


def test_hang_scoped_to_one_backend(emu: Emulator) -> None:
    emu.set_fault("hang", "fake_manila")
    other = qrmi_resource(emu, "fake_nairobi")
    assert other.status().status == qrmi.ResourceStatusCode.Online
    stuck = Call(qrmi_resource(emu, "fake_manila").status)
    assert not stuck.wait(0.5)
    emu.clear_faults()
    assert stuck.wait(5.0)


def test_error5xx(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila")
    emu.set_fault("error5xx", "fake_manila", status=503)
    with pytest.raises(qrmi.QrmiError, match="503"):
        res.status()
    with pytest.raises(qrmi.QrmiError, match="503"):
        res.acquire()
    assert emu.state.open_sessions() == []
    assert qrmi_resource(emu, "fake_nairobi").status().status == qrmi.ResourceStatusCode.Online
    emu.clear_faults()
    assert res.status().status == qrmi.ResourceStatusCode.Online


def test_reject_auth(emu: Emulator) -> None:
    emu.set_fault("reject-auth")
    res = qrmi_resource(emu, "fake_manila")
    with pytest.raises(qrmi.AuthenticationFailedError):
        res.status()
    emu.clear_faults()
    assert res.status().status == qrmi.ResourceStatusCode.Online


def test_offline_paused_online(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila")
    emu.set_online("fake_manila", False, reason="maintenance window")
    status = res.status()
    assert status.status == qrmi.ResourceStatusCode.Offline
    assert status.status_reason == "maintenance window"
    emu.set_online("fake_manila", False, reason="calibrating", paused=True)
    assert res.status().status == qrmi.ResourceStatusCode.Paused
    assert qrmi_resource(emu, "fake_nairobi").status().status == qrmi.ResourceStatusCode.Online
    emu.set_online("fake_manila", True)
    assert res.status().status == qrmi.ResourceStatusCode.Online


def test_slow(emu: Emulator) -> None:
    res = qrmi_resource(emu, "fake_manila")
    res.status()
    emu.set_fault("slow", "fake_manila", seconds=0.4)
    started = time.monotonic()
    res.target()  # two backend-scoped requests: configuration and properties
    assert time.monotonic() - started >= 0.8
    started = time.monotonic()
    qrmi_resource(emu, "fake_nairobi").target()
    assert time.monotonic() - started < 0.4


def test_job_fail(emu: Emulator) -> None:
    import json

    emu.set_fault("job-fail", "fake_manila", reason="readout chain fault")
    res = qrmi_resource(emu, "fake_manila")
    body = {"pubs": [["OPENQASM 3.0;", None, 10]], "shots": 10, "version": 2, "options": {}}
    task = res.task_start(
        qrmi.Payload.QiskitPrimitive(input=json.dumps(body), program_id="sampler")
    )
    assert emu.state.wait_until(lambda s: s.job(task).status.final, timeout=10)
    assert res.task_status(task) == qrmi.TaskStatus.Failed
    assert emu.state.job(task).error == "RuntimeError: readout chain fault"


def test_bad_fault_is_refused_with_the_field_named(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="'kind'"):
        emu.set_fault("explode")
    with pytest.raises(ValueError, match="'seconds'"):
        emu.set_fault("slow", seconds=-1)
    with pytest.raises(KeyError, match="fake_nowhere"):
        emu.set_fault("hang", "fake_nowhere")
