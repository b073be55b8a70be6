"""Usage figures without a cluster: the real qrmi client opens a session on the emulator
and runs a job in it; the agents' reader asks the emulator's IBM REST API (real HTTP) and
must find what the emulator itself recorded. A vendor that reports no usage gives
NotReported, never zeros. ``qpu-k8s usage`` sums records per workload."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import qrmi

from qpu_k8s.cli.usage import period, summarize, table
from qpu_k8s.core.kubeclient import api_client
from qpu_k8s.core.model import QuantumBackend, parse_backend
from qpu_k8s.core.usage import Agent, ReportState, UsageSpec, VendorUsage
from qpu_k8s.emulator import Emulator
from qpu_k8s.node.releases import Backoff
from qpu_k8s.node.usage import Released, UsageReporter, session_id
from qpu_k8s.node.vendorusage import UsageFetchError, VendorUsageReader
from testsupport.emulator import bell_isa, ibm_backend, qrmi_resource, sampler_payload
from testsupport.nodeapi import NodeApi
from testsupport.waiting import wait_for

BACKEND = "fake_manila"


def _backend(emu: Emulator) -> QuantumBackend:
    b = ibm_backend(emu, "fake-manila", BACKEND)
    return parse_backend(b, "test")


def _session_with_jobs(emu: Emulator, jobs: int) -> str:
    """Acquire (a session), run ``jobs`` Sampler jobs in it to the end, release."""
    from qrmi.primitives.ibm import get_backend

    res = qrmi_resource(emu, BACKEND)
    token: str = res.acquire()
    payload = sampler_payload(bell_isa(get_backend(res)), 200)
    for _ in range(jobs):
        task = res.task_start(payload)
        wait_for(lambda t=task: res.task_status(t) == qrmi.TaskStatus.Completed, 60, f"job {task}")
    res.release(token)
    return token


def test_reader_finds_what_the_emulator_recorded(emu: Emulator) -> None:
    token = _session_with_jobs(emu, 2)
    usage = VendorUsageReader().read(_backend(emu), emu.ibm_credentials(), token)

    jobs = emu.state.jobs(session_id=token)
    assert usage.state is ReportState.REPORTED
    assert usage.job_count == len(jobs) == 2
    assert {j.id for j in usage.jobs} == {j.id for j in jobs}
    runs = [j.finished_at - j.started_at for j in jobs if j.finished_at and j.started_at]
    assert usage.quantum_seconds == pytest.approx(sum(runs), abs=0.01)
    first = min(j.started_at for j in jobs if j.started_at)
    last = max(j.finished_at for j in jobs if j.finished_at)
    assert usage.session_usage_seconds == pytest.approx(last - first, abs=0.01)
    assert emu.state.open_sessions() == []


def test_no_usage_from_the_vendor_is_not_reported_not_zero(emu: Emulator) -> None:
    emu.set_fault("no-usage", BACKEND)
    token = _session_with_jobs(emu, 1)
    usage = VendorUsageReader().read(_backend(emu), emu.ibm_credentials(), token)
    assert usage.state is ReportState.NOT_REPORTED
    assert "no usage" in usage.reason
    assert (usage.session_usage_seconds, usage.quantum_seconds, usage.job_count) == (None,) * 3


def test_reader_failures_are_retryable_and_leak_no_key(emu: Emulator) -> None:
    token = _session_with_jobs(emu, 0)
    creds = {"QRMI_IBM_QCS_IAM_APIKEY": "wrong-key-123456"}
    with pytest.raises(UsageFetchError) as err:
        VendorUsageReader().read(_backend(emu), creds, token)
    assert "wrong-key" not in str(err.value)


def test_session_id_is_public_for_ibm_and_a_fingerprint_elsewhere() -> None:
    assert session_id("ibm-quantum-compute-service", "abc123") == "abc123"
    assert session_id("pasqal-local", "secret-ish").startswith("sha256:")
    assert session_id("pasqal-cloud", "dummy") == ""  # acquire holds no session


def _record(ns: str, owner: str, backend: str, released: str, vendor: dict[str, Any]) -> Any:
    return {
        "spec": {
            "namespace": ns,
            "owner": {"kind": "Job", "name": owner},
            "backend": backend,
            "releasedAt": released,
            "wallSeconds": 10.0,
            "vendor": vendor,
        }
    }


def test_usage_view_sums_a_month_per_workload() -> None:
    reported = {"state": "Reported", "quantumSeconds": 1.5, "jobCount": 2}
    missing = VendorUsage.not_reported("x").model_dump(mode="json", by_alias=True)
    items = [
        _record("team-a", "run", "ibm-torino", "2026-12-01T00:00:00Z", reported),
        _record("team-a", "run", "ibm-torino", "2026-12-31T23:59:59.5Z", missing),
        _record("team-a", "run", "ibm-torino", "2027-01-01T00:00:00Z", reported),  # next month
        _record("team-b", "sweep", "ibm-torino", "2026-12-10T00:00:00Z", reported),
    ]
    start, end = period("2026-12", None, None, datetime.now(UTC))
    rows = summarize(items, start, end, ["namespace", "owner", "backend"])
    assert [
        (r.namespace, r.acquisitions, r.quantum_seconds, r.jobs, r.unreported) for r in rows
    ] == [
        ("team-a", 2, 1.5, 2, 1),
        ("team-b", 1, 1.5, 2, 0),
    ]
    text = table(rows, ["namespace"])
    assert text.splitlines()[0].split() == [
        "NAMESPACE",
        "ACQUISITIONS",
        "WALL-S",
        "QPU-S",
        "JOBS",
        "UNREPORTED",
    ]


# -- the reporter: journal first, record later, exactly once ------------------------------------
RECORDS_PATH = "/apis/quantum.example.com/v1alpha1/namespaces/qpu-system/quantumusages"


def _reporter(emu: Emulator, api: Any, state: Path) -> UsageReporter:
    backend = _backend(emu)
    return UsageReporter(
        agent=Agent.DEVICE_PLUGIN,
        node="node-1",
        namespace="qpu-system",
        state_dir=state,
        api=api,
        backends=lambda name: (backend, emu.ibm_credentials()) if name == "fake-manila" else None,
        backoff=Backoff(base=0.01, cap=0.05),
    )


def test_a_refused_record_survives_a_restart_and_is_written_once(
    emu: Emulator, tmp_path: Path
) -> None:
    token = _session_with_jobs(emu, 1)
    session = emu.state.session(token)
    assert session is not None
    assert session.closed_at is not None
    rel = Released(
        agent=Agent.DEVICE_PLUGIN,
        acquisition_id="acq-1",
        namespace="team-a",
        pod="run-1-x",
        backend="fake-manila",
        token=token,
        acquired_at=session.created_at,
        released_at=session.closed_at,
    )
    with NodeApi("node-1") as fake:
        kube = api_client(fake.kubeconfig(tmp_path / "kubeconfig"))
        fake.refuse_creates = 403
        first = _reporter(emu, kube, tmp_path / "state")
        first.open()
        first.released(rel)
        assert first.report_due(time.time()) == 0  # refused: kept in the journal
        first.stop()  # the agent restarts

        fake.refuse_creates = None
        second = _reporter(emu, kube, tmp_path / "state")
        second.open()
        assert second.knows("acq-1")
        second.released(rel)  # a repeated report of the same release changes nothing
        assert second.report_due(time.time()) == 1
        assert second.report_due(time.time()) == 0
        second.stop()
        kube.close()  # type: ignore[no-untyped-call]

    (obj,) = fake.created[RECORDS_PATH]
    spec = UsageSpec.model_validate(obj["spec"])
    assert (spec.pod, spec.session_id, spec.resource_id) == ("run-1-x", token, BACKEND)
    assert spec.vendor.job_count == 1
    assert spec.wall_seconds == pytest.approx(session.closed_at - session.created_at, abs=0.002)
    (event,) = fake.created["/api/v1/namespaces/qpu-system/events"]
    assert event["involvedObject"]["name"] == obj["metadata"]["name"]
    assert emu.ibm_credentials()["QRMI_IBM_QCS_IAM_APIKEY"] not in json.dumps(fake.created)
