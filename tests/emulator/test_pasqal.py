"""The real qrmi pasqal-cloud client, qrmi.pulser and the pasqal-cloud SDK against the emulator."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import qrmi

from qpu_k8s.emulator import Emulator, JobStatus
from testsupport.emulator import pasqal_cloud_client, qrmi_resource


def bell_sequence(device: Any | None = None) -> Any:
    """Two blockaded atoms and a collective pi pulse: about half "01", half "10"."""
    from pulser import Pulse, Register, Sequence
    from pulser.devices import AnalogDevice

    device = device or AnalogDevice
    # A QPU (FRESNEL) takes only registers built from a layout, as the real one does.
    register = Register.from_coordinates([(0, 0), (5, 0)], prefix="q")
    seq = Sequence(register.with_automatic_layout(device), device)
    seq.declare_channel("rydberg", "rydberg_global")
    seq.add(Pulse.ConstantPulse(500, math.pi / (math.sqrt(2) * 0.5), 0, 0), "rydberg")
    seq.measure("ground-rydberg")
    return seq


def assert_bell(counts: dict[str, int], runs: int) -> None:
    assert sum(counts.values()) == runs
    assert counts.get("01", 0) + counts.get("10", 0) > 0.9 * runs
    assert min(counts.get("01", 0), counts.get("10", 0)) > 0.3 * runs


def test_status_and_target(emu: Emulator) -> None:
    fresnel = qrmi_resource(emu, "FRESNEL")
    assert fresnel.status().status == qrmi.ResourceStatusCode.Online
    [spec] = json.loads(fresnel.target().value)
    assert spec["device_type"] == "FRESNEL"
    assert json.loads(spec["specs"])["name"] == "AnalogDevice"
    emulators = json.loads(qrmi_resource(emu, "EMU_FREE").target().value)
    assert {d["device_type"] for d in emulators} == {"FRESNEL", "EMU_MPS", "EMU_FREE"}


def test_offline_device(emu: Emulator) -> None:
    emu.set_online("FRESNEL", False, reason="recalibration")
    assert qrmi_resource(emu, "FRESNEL").status().status == qrmi.ResourceStatusCode.Offline
    assert qrmi_resource(emu, "EMU_MPS").status().status == qrmi.ResourceStatusCode.Online


def test_task_start_status_result(emu: Emulator) -> None:
    res = qrmi_resource(emu, "FRESNEL")
    token = res.acquire()  # pasqal-cloud: a dummy token, no session
    assert token
    assert emu.state.sessions() == []
    payload = qrmi.Payload.PasqalCloud(sequence=bell_sequence().to_abstract_repr(), job_runs=300)
    task = res.task_start(payload)
    batch = emu.state.batch(task)
    assert batch is not None
    assert batch.device_type == "FRESNEL"
    assert emu.state.wait_until(
        lambda s: all(s.job(j).status.final for j in batch.job_ids), timeout=30
    )
    assert res.task_status(task) == qrmi.TaskStatus.Completed
    assert_bell(json.loads(res.task_result(task).value)["counter"], 300)
    res.release(token)


def test_pulser_connection(emu: Emulator) -> None:
    from qrmi.pulser import PulserQRMIConnection

    conn = PulserQRMIConnection(qrmi_resource(emu, "FRESNEL"))
    device = conn.fetch_available_devices()["FRESNEL"]
    remote = conn.submit(bell_sequence(device), job_params=[{"runs": 400}], wait=True)
    assert_bell(dict(remote.results[0].final_bitstrings), 400)


def test_sequence_for_another_device_fails_on_the_qpu(emu: Emulator) -> None:
    from pulser.devices import DigitalAnalogDevice

    res = qrmi_resource(emu, "FRESNEL")
    seq = bell_sequence(DigitalAnalogDevice)
    task = res.task_start(qrmi.Payload.PasqalCloud(sequence=seq.to_abstract_repr(), job_runs=10))
    assert emu.state.wait_until(
        lambda s: all(j.status.final for j in s.jobs(vendor="pasqal")), timeout=30
    )
    assert res.task_status(task) == qrmi.TaskStatus.Failed
    [job] = emu.state.jobs(vendor="pasqal")
    assert "DigitalAnalogDevice" in (job.error or "")


def test_cancel(emu: Emulator) -> None:
    emu.set_fault("job-delay", "EMU_MPS", seconds=30)
    res = qrmi_resource(emu, "EMU_MPS")
    task = res.task_start(
        qrmi.Payload.PasqalCloud(sequence=bell_sequence().to_abstract_repr(), job_runs=10)
    )
    res.task_stop(task)
    assert res.task_status(task) == qrmi.TaskStatus.Cancelled
    assert all(j.status == JobStatus.CANCELLED for j in emu.state.jobs(vendor="pasqal"))


def test_wrong_token(emu: Emulator) -> None:
    res = qrmi_resource(emu, "FRESNEL", QRMI_PASQAL_CLOUD_AUTH_TOKEN="forged")
    payload = qrmi.Payload.PasqalCloud(sequence=bell_sequence().to_abstract_repr(), job_runs=1)
    with pytest.raises(qrmi.QrmiError, match="401"):
        res.task_start(payload)
    assert emu.state.batches() == []


@pytest.mark.parametrize("grant", ["client_credentials", "password"])
def test_oauth_grants(emu: Emulator, grant: str) -> None:
    from qpu_k8s.emulator import config as c

    if grant == "client_credentials":
        creds = {
            "QRMI_PASQAL_CLOUD_CLIENT_ID": c.DEFAULT_PASQAL_CLIENT_ID,
            "QRMI_PASQAL_CLOUD_CLIENT_SECRET": c.DEFAULT_PASQAL_CLIENT_SECRET,
        }
    else:
        creds = {
            "PASQAL_USERNAME": c.DEFAULT_PASQAL_USERNAME,
            "PASQAL_PASSWORD": c.DEFAULT_PASQAL_PASSWORD,
        }
    config = {**emu.pasqal_config("FRESNEL"), **creds}
    res = qrmi.QuantumResource.from_config("FRESNEL", qrmi.ResourceType.PasqalCloud, config)
    task = res.task_start(
        qrmi.Payload.PasqalCloud(sequence=bell_sequence().to_abstract_repr(), job_runs=50)
    )
    assert emu.state.batch(task) is not None
    assert [r.status for r in emu.state.requests("/oauth/token")] == [200]

    wrong = {k: v + "-wrong" if "SECRET" in k or "PASSWORD" in k else v for k, v in config.items()}
    bad = qrmi.QuantumResource.from_config("FRESNEL", qrmi.ResourceType.PasqalCloud, wrong)
    with pytest.raises(qrmi.QrmiError, match="401"):
        bad.target()


def test_pasqal_cloud_sdk_create_batch(emu: Emulator) -> None:
    client = pasqal_cloud_client(emu)
    assert set(client.get_device_specs_dict()) == {"FRESNEL", "EMU_MPS", "EMU_FREE"}
    batch = client.create_batch(
        bell_sequence().to_abstract_repr(),
        jobs=[{"runs": 200}, {"runs": 100}],
        device_type="EMU_MPS",
        wait=True,
    )
    assert batch.status == "DONE"
    results = [job.result for job in batch.ordered_jobs]
    assert_bell(results[0], 200)
    assert_bell(results[1], 100)
    # The SDK gzips the batch body by default: the emulator took it as is.
    assert next(r.status for r in emu.state.requests("/api/v1/batches")) == 200
