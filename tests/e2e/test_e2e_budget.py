"""QPU budgets on the real cluster: the operator tallies a namespace's QuantumUsage records into
its QuantumBudget, and the apiserver's ValidatingAdmissionPolicy (the chart's) refuses new QPU
pods and claims there while it is spent, naming the budget, its period and when it resets;
another namespace proceeds; at the period boundary the budget is restored without anyone
touching it. Malformed budgets are refused by the apiserver with the field named.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

from .conftest import ALL_LANES, scanned_namespace

pytestmark = pytest.mark.cluster
ATTR = 'device.attributes["qpu.quantum.example.com"]'


def budget(spec: dict[str, Any], name: str = "qpu-budget") -> dict[str, Any]:
    return {
        "apiVersion": "quantum.example.com/v1alpha1",
        "kind": "QuantumBudget",
        "metadata": {"name": name},
        "spec": spec,
    }


def budget_status(lc: LocalCluster, ns: str) -> dict[str, Any]:
    obj = lc.kubectl_json("-n", ns, "get", "quantumbudget", "qpu-budget")
    status: dict[str, Any] = obj.get("status") or {}
    return status


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def qpu_pod(name: str) -> dict[str, Any]:
    """A pod that takes a lane, prints its QRMI environment and ends (restartPolicy Never)."""
    return rel.pod(name, stay=False, limits={rel.RESOURCE: 1})


def refused(lc: LocalCluster, ns: str, doc: dict[str, Any]) -> str:
    """Create ``doc``; it must be refused: the apiserver's message."""
    out = lc.kubectl("-n", ns, "create", "-f", "-", stdin=json.dumps(doc), check=False)
    assert out.returncode != 0, f"{doc['kind']} {doc['metadata']['name']} was admitted"
    return out.stderr


def completed(lc: LocalCluster, ns: str, name: str) -> None:
    wait_until(
        lambda: rel.pod_phase(lc, ns, name).get("phase") == "Succeeded",
        120,
        f"pod {ns}/{name} to run to completion",
    )


def usage_records(lc: LocalCluster, release: rel.Release, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lc.kubectl_json(
        "-n", release.namespace, "get", "quantumusages", "-l", f"quantum.example.com/namespace={ns}"
    )["items"]
    return items


@pytest.fixture
def other_ns(local_cluster: LocalCluster, release: rel.Release) -> Iterator[str]:
    """A second namespace, without a budget."""
    name = f"e2e-budget-other-{uuid.uuid4().hex[:4]}"
    with scanned_namespace(local_cluster, release, name):
        yield name


def test_a_spent_budget_refuses_new_qpu_requests_until_its_period_resets(
    local_cluster: LocalCluster, release: rel.Release, ns: str, other_ns: str
) -> None:
    lc = local_cluster
    wait_until(lambda: release.allocatable() == len(ALL_LANES), 120, "every lane free")
    lc.apply([qpu_pod("first")], "-n", ns)
    completed(lc, ns, "first")
    (record,) = wait_until(
        lambda: usage_records(lc, release, ns) or None, 90, "the first pod's usage record"
    )
    released = parse(record["spec"]["releasedAt"])
    # The period began just before the first release and ends 45 s from now: one session
    # allowed, and it is used.
    start = (released - timedelta(seconds=1)).replace(microsecond=0)  # RFC 3339 in seconds
    length = int((datetime.now(UTC) - start).total_seconds()) + 45
    lc.apply(
        [budget({"sessions": 1, "periodSeconds": length, "periodStart": stamp(start)})], "-n", ns
    )
    status = wait_until(
        lambda: (s := budget_status(lc, ns)).get("spent") and s,
        60,
        "the operator to mark the budget spent",
    )
    assert status["used"]["sessions"] == 1, status
    assert status["usageKnown"] is True, status
    resets = parse(status["resetsAt"])
    assert resets == start + timedelta(seconds=length)

    # New QPU requests in the namespace: refused by the apiserver, with the budget's words.
    message = refused(lc, ns, qpu_pod("second"))
    assert f"QPU budget {ns}/qpu-budget is spent: 1 of 1 sessions" in message, message
    assert f"it resets at {status['resetsAt']}" in message, message
    assert "ValidatingAdmissionPolicy" in message, message
    claim = rel.claim("second", f'{ATTR}.vendor == "ibm"')
    assert f"QPU budget {ns}/qpu-budget is spent" in refused(lc, ns, claim)
    # A pod without a QPU is not the budget's business; another namespace is not limited.
    lc.apply([rel.pod("no-qpu", stay=False)], "-n", ns)
    lc.apply([qpu_pod("elsewhere")], "-n", other_ns)
    completed(lc, other_ns, "elsewhere")

    # The period ends: the operator restores the budget by itself, and the pod is admitted.
    restored = wait_until(
        lambda: (s := budget_status(lc, ns)).get("spent") is False and s,
        120,
        "the budget restored at the period boundary",
    )
    assert parse(restored["periodStart"]) == resets
    assert restored["used"]["sessions"] == 0
    lc.apply([qpu_pod("third")], "-n", ns)
    completed(lc, ns, "third")
    metrics = release.metrics("operator", 9400)
    assert f'qpu_k8s_operator_budget_spent{{namespace="{ns}"}}' in metrics


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (budget({"sessions": -1}), "spec.sessions: Invalid value: -1"),
        (budget({"period": "Day"}), "spec: set qpuSeconds or sessions"),
        (budget({"sessions": 1, "periodStart": "2026-12-01T00:00:00Z"}), "periodStart: only with"),
        (budget({"sessions": 1}, name="team-budget"), "metadata.name: a namespace has one QPU"),
        (
            budget({"sessions": 1, "period": "Fortnight"}),
            'spec.period: Unsupported value: "Fortnight"',
        ),
    ],
    ids=["negative", "no-limit", "start-without-seconds", "wrong-name", "bad-period"],
)
def test_a_malformed_budget_is_refused_with_the_field_named(
    local_cluster: LocalCluster, ns: str, doc: dict[str, Any], expected: str
) -> None:
    out = local_cluster.kubectl("-n", ns, "create", "-f", "-", stdin=json.dumps(doc), check=False)
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr


def test_the_budget_policy_is_served_by_the_apiserver(local_cluster: LocalCluster) -> None:
    """The chart's policy is accepted with its parameter kind resolved (no misconfiguration
    that would turn failurePolicy: Fail into refusing every QPU pod)."""
    (vap,) = [
        v
        for v in local_cluster.kubectl_json("get", "validatingadmissionpolicies")["items"]
        if v["metadata"]["name"].startswith("qpu-budget.")
    ]

    def checked() -> dict[str, Any] | None:
        obj = local_cluster.kubectl_json(
            "get", "validatingadmissionpolicy", vap["metadata"]["name"]
        )
        status = obj.get("status") or {}
        return status if status.get("observedGeneration") == obj["metadata"]["generation"] else None

    status = wait_until(checked, 60, "the apiserver's type check of the budget policy")
    assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
