"""Pure reconcile logic: probe outcome → status, conditions, transition times and Events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from qpu_k8s.core.model import parse_backend
from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.operator.conditions import transitions
from qpu_k8s.operator.reconcile import (
    Observation,
    ProbeResult,
    SecretProblem,
    SecretReason,
    compute_status,
    is_ready,
)
from qpu_k8s.operator.status import BackendStatus, ConditionStatus, ConditionType
from testsupport.operator import valid_reason

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
BACKEND = parse_backend(
    {
        "name": "ibm-torino",
        "spec": {
            "resourceId": "ibm_torino",
            "type": "ibm-quantum-compute-service",
            "config": {
                "QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:9/api/v1",
                "QRMI_IBM_QCS_IAM_ENDPOINT": "http://127.0.0.1:9",
                "QRMI_IBM_QCS_SERVICE_CRN": "crn:x",
            },
            "credentialsSecretRef": {"name": "ibm-creds"},
            "attributes": {"site": "lab-1"},
        },
    }
)
TARGET = {
    "configuration": {"n_qubits": 133, "processor_type": {"family": "Heron", "revision": 1}},
    "properties": {
        "qubits": [[{"name": "T1", "value": 150.0, "unit": "us"}]],
        "gates": [
            {"gate": "cz", "qubits": [0, 1], "parameters": [{"name": "gate_error", "value": 0.003}]}
        ],
    },
}


def obs(probe: ProbeResult | None = None, at: datetime = T0, **kw: object) -> Observation:
    return Observation(generation=1, now=at, backend=BACKEND, probe=probe, **kw)  # type: ignore[arg-type]


def cond(status: BackendStatus, t: ConditionType) -> tuple[str, str, str]:
    c = status.condition(t)
    assert c is not None
    return (c.status.value, c.reason, c.message)


def online(**kw: object) -> ProbeResult:
    return ProbeResult(Health(True, "online", "", 3), TARGET, None, 0.25)


def test_online_probe_makes_ready_with_qubits_and_quality() -> None:
    s = compute_status(obs(online()), BackendStatus())
    assert is_ready(s)
    assert cond(s, ConditionType.ACCESSIBLE)[:2] == ("True", "VendorReachable")
    assert cond(s, ConditionType.DEGRADED)[:2] == ("False", "AsExpected")
    assert (s.qubits, s.technology, s.vendor, s.pending_jobs) == (133, "superconducting", "ibm", 3)
    assert s.attributes["processor"] == "Heron r1"
    assert s.attributes["twoQubitErrorPpm"] == 3000
    assert s.attributes["site"] == "lab-1"
    assert "lane" not in s.attributes
    assert (s.observed_generation, s.state, s.probe_latency_ms) == (1, "online", 250)
    assert s.last_probe_time == "2026-05-01T12:00:00Z"


@pytest.mark.parametrize(
    ("health", "accessible", "reason", "words"),
    [
        (
            Health(False, "offline", "maintenance until 14:00"),
            "True",
            "BackendOffline",
            "maintenance until 14:00",
        ),
        (Health(False, "paused", "calibrating"), "True", "BackendPaused", "calibrating"),
        (
            Health(False, "timeout", "no answer within 2s"),
            "False",
            "ProbeTimeout",
            "did not answer",
        ),
        (Health(False, "auth", "401 Unauthorized"), "False", "AuthenticationFailed", "'ibm-creds'"),
        (
            Health(False, "unreachable", "connection refused"),
            "False",
            "VendorUnreachable",
            "127.0.0.1:9",
        ),
        (Health(False, "error", "boom"), "False", "ProbeFailed", "boom"),
    ],
)
def test_failures_name_the_reason_and_what_to_do(
    health: Health, accessible: str, reason: str, words: str
) -> None:
    s = compute_status(obs(ProbeResult(health, seconds=0.1)), BackendStatus())
    ready = cond(s, ConditionType.READY)
    assert ready[:2] == ("False", reason)
    assert words in ready[2]
    assert cond(s, ConditionType.ACCESSIBLE)[0] == accessible
    assert valid_reason(reason)
    assert s.state == health.status


@pytest.mark.parametrize("reason", list(SecretReason))
def test_secret_problems_are_conditions(reason: SecretReason) -> None:
    problem = SecretProblem(reason, "Secret 'ibm-creds' in namespace 'qpu' does not exist")
    s = compute_status(obs(secret_problem=problem), BackendStatus())
    assert cond(s, ConditionType.ACCESSIBLE)[:2] == ("False", reason.value)
    assert cond(s, ConditionType.READY)[:2] == ("False", reason.value)
    assert s.state == "no-credentials"


def test_invalid_spec_lists_the_fields() -> None:
    o = Observation(
        generation=2,
        now=T0,
        spec_problems=(("spec.nodeSelector", "a node-bound backend needs a nodeSelector"),),
    )
    s = compute_status(o, BackendStatus())
    ready = cond(s, ConditionType.READY)
    assert ready[:2] == ("False", "InvalidSpec")
    assert "spec.nodeSelector" in ready[2]
    assert cond(s, ConditionType.ACCESSIBLE)[0] == "Unknown"


def test_target_failure_degrades_but_keeps_last_figures() -> None:
    first = compute_status(obs(online()), BackendStatus())
    broken = ProbeResult(Health(True, "online", ""), None, "HTTP 500 from /properties", 0.1)
    s = compute_status(obs(broken, at=T0 + timedelta(minutes=1)), first)
    assert is_ready(s)
    assert cond(s, ConditionType.DEGRADED)[:2] == ("True", "TargetUnavailable")
    assert s.qubits == 133
    assert s.attributes["twoQubitErrorPpm"] == 3000


def test_publish_problems_degrade() -> None:
    s = compute_status(
        obs(online(), publish_problems=("ResourceSlice not published",)), BackendStatus()
    )
    assert cond(s, ConditionType.DEGRADED)[:2] == ("True", "PublishFailed")


def test_transition_time_moves_only_on_change_and_events_follow_changes() -> None:
    s1 = compute_status(obs(online()), BackendStatus())
    events1 = transitions([], s1.conditions)
    assert [(e.type, e.reason) for e in events1] == [("Normal", "Online")]

    s2 = compute_status(obs(online(), at=T0 + timedelta(minutes=1)), s1)
    assert transitions(s1.conditions, s2.conditions) == []
    assert s2.condition(ConditionType.READY).last_transition_time == "2026-05-01T12:00:00Z"  # type: ignore[union-attr]
    assert s2.last_probe_time == "2026-05-01T12:01:00Z"

    down = ProbeResult(Health(False, "timeout", "no answer within 2s"), seconds=2.0)
    s3 = compute_status(obs(down, at=T0 + timedelta(minutes=2)), s2)
    assert s3.condition(ConditionType.READY).last_transition_time == "2026-05-01T12:02:00Z"  # type: ignore[union-attr]
    events3 = transitions(s2.conditions, s3.conditions)
    assert {(e.type, e.reason) for e in events3} == {("Warning", "ProbeTimeout")}
    assert len(events3) == 2  # Ready and Accessible both changed
    assert all("was True" in e.message for e in events3)
    # Still down, same reason: no new Event, qubits kept from the last good probe.
    s4 = compute_status(obs(down, at=T0 + timedelta(minutes=3)), s3)
    assert transitions(s3.conditions, s4.conditions) == []
    assert s4.qubits == 133


def test_status_round_trips_through_the_api_shape() -> None:
    s = compute_status(obs(online()), BackendStatus())
    api = s.to_api()
    assert api["conditions"][0]["type"] == "Ready"
    assert BackendStatus.from_api(api) == s
    assert BackendStatus.from_api({"conditions": "garbage"}) == BackendStatus()
    assert BackendStatus.from_api(None) == BackendStatus()


def test_a_new_generation_drops_old_quality_figures() -> None:
    first = compute_status(obs(online()), BackendStatus())
    new = Observation(generation=2, now=T0, backend=BACKEND, probe=None)
    s = compute_status(new, first)
    assert "twoQubitErrorPpm" not in s.attributes
    assert cond(s, ConditionType.READY)[0] == ConditionStatus.UNKNOWN.value


def test_the_deprecated_runtime_service_type_is_ready_but_degraded_with_the_fix() -> None:
    """qiskit-runtime-service still works, but the status and its Warning Event say what to
    change (its transition ended 2026-11-21)."""
    qrs = parse_backend(
        {
            "name": "ibm-old",
            "spec": {
                "resourceId": "ibm_torino",
                "type": "qiskit-runtime-service",
                "config": {
                    "QRMI_IBM_QRS_ENDPOINT": "http://127.0.0.1:9/api/v1",
                    "QRMI_IBM_QRS_IAM_ENDPOINT": "http://127.0.0.1:9",
                    "QRMI_IBM_QRS_SERVICE_CRN": "crn:x",
                },
                "credentialsSecretRef": {"name": "ibm-creds"},
            },
        }
    )
    first = Observation(generation=1, now=T0, backend=qrs, probe=online())
    s = compute_status(first, BackendStatus())
    assert is_ready(s)
    status, reason, message = cond(s, ConditionType.DEGRADED)
    assert (status, reason) == ("True", "DeprecatedType")
    assert "spec.type ibm-quantum-compute-service" in message
    assert "QRMI_IBM_QCS_IAM_APIKEY" in message
    events = transitions(BackendStatus().conditions, s.conditions)
    assert any(e.type == "Warning" and e.reason == "DeprecatedType" for e in events)
    # A real problem takes the condition; the deprecation is shown again once it is gone.
    failing = ProbeResult(Health(True, "online", "", 3), None, "target() timed out", 0.25)
    later = compute_status(Observation(generation=1, now=T0, backend=qrs, probe=failing), s)
    assert cond(later, ConditionType.DEGRADED)[1] == "TargetUnavailable"
    # The supported type is not degraded.
    assert cond(compute_status(obs(online()), BackendStatus()), ConditionType.DEGRADED)[1] == (
        "AsExpected"
    )
