"""The QuantumUsage CRD without a cluster: generated file current, valid for Kubernetes,
schema and CEL reject malformed records naming the field; every record the agents build
passes. (The immutability transition rule needs an apiserver: tests/e2e/test_e2e_usage.py.)"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from qpu_k8s.core.usage import Agent, UsageSpec, VendorJob, VendorUsage, usage_object
from qpu_k8s.operator import crd, usage_crd
from testsupport import packaging
from testsupport.operator import cel_errors, schema_errors

SCHEMA = usage_crd.openapi_schema()


def _spec(**over: Any) -> UsageSpec:
    base: dict[str, Any] = {
        "namespace": "team-a",
        "pod": "run-1-abcde",
        "agent": Agent.DEVICE_PLUGIN,
        "node": "node-1",
        "backend": "ibm-torino",
        "resource_id": "ibm_torino",
        "resource_type": "ibm-quantum-compute-service",
        "acquisition_id": "a1",
        "session_id": "s1",
        "acquired_at": "2026-12-05T20:00:00.000Z",
        "released_at": "2026-12-05T20:00:30.500Z",
        "wall_seconds": 30.5,
        "vendor": VendorUsage(
            state="Reported",
            session_usage_seconds=3.0,
            quantum_seconds=2.5,
            job_count=1,
            jobs=[VendorJob(id="j1", quantum_seconds=2.5, status="Completed")],
        ),
    }
    return UsageSpec(**{**base, **over})


def _problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return schema_errors(SCHEMA, obj) + [
        p for p in cel_errors(SCHEMA, obj) if "oldSelf" not in p[1]
    ]


def test_generated_file_and_chart_copy_are_current() -> None:
    assert packaging.USAGE_CRD_SOURCE.read_text() == crd.rendered_files()[usage_crd.OUTPUT]
    assert packaging.USAGE_CRD_CHART_COPY.read_bytes() == packaging.USAGE_CRD_SOURCE.read_bytes()


@pytest.mark.parametrize("version", ["1.34", "1.37"])
def test_crd_is_valid_for_kubernetes(version: str) -> None:
    kubernetes_validate.validate(usage_crd.crd(), version, strict=True)


@pytest.mark.parametrize(
    "spec",
    [
        _spec(),
        _spec(vendor=VendorUsage.not_reported("the vendor's API reported no usage")),
        _spec(agent=Agent.DRA, pod="", claim="qpu-claim", claim_uid="u1"),
    ],
    ids=["reported", "not-reported", "dra"],
)
def test_records_the_agents_write_pass(spec: UsageSpec) -> None:
    assert _problems(usage_object(spec, "qpu-system")) == []


def _obj(**spec_over: Any) -> dict[str, Any]:
    obj = usage_object(_spec(), "qpu-system")
    obj["spec"] = {**obj["spec"], **spec_over}  # type: ignore[dict-item]
    return obj


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"namespace": "Team_A"}, "spec.namespace"),
        ({"wallSeconds": -1}, "spec.wallSeconds"),
        ({"agent": "slurm"}, "spec.agent"),
        ({"releasedAt": "2026-12-05T19:00:00Z"}, "spec.releasedAt"),
        ({"pod": ""}, "spec.pod"),
        ({"agent": "dra", "claim": ""}, "spec.claim"),
        ({"vendor": {"state": "NotReported", "jobCount": 0, "reason": "x"}}, "spec.vendor.reason"),
        ({"vendor": {"state": "NotReported"}}, "spec.vendor.reason"),
        ({"vendor": {"state": "Reported"}}, "spec.vendor.jobCount"),
        ({"vendor": {"state": "Reported", "jobCount": -2}}, "spec.vendor.jobCount"),
    ],
)
def test_malformed_records_are_rejected_naming_the_field(over: dict[str, Any], field: str) -> None:
    problems = _problems(_obj(**over))
    assert field in [p for p, _ in problems], problems
