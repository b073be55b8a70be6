"""QPU usage accounted to the workload, on the real cluster with the chart's agents.

* A Job runs the paper's Qiskit script through the device plugin; its QuantumUsage record
  names the Job, the pod and its ServiceAccount, and matches the emulator's own record of
  the session (times within a second, the same jobs); the counters and an Event follow.
* A DRA claim on a backend whose vendor reports no usage: the record says NotReported.
* A record whose write is refused (the agent's RoleBinding removed) is kept in the agent's
  journal across a restart of the agent and written once the right is back; records
  survive a restart of the operator.
* The apiserver refuses a malformed or edited record, naming the field (schema and CEL).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
import yaml

from qpu_k8s.cli.usage import period, summarize
from qpu_k8s.core.usage import Agent, UsageSpec, VendorUsage, usage_object
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until
from testsupport.processes import metric_value

from .conftest import ALL_LANES
from .test_e2e_deviceplugin import BELL, bell_result, local_images

pytestmark = pytest.mark.cluster
MANILA = "fake_manila"


def records(lc: LocalCluster, release: rel.Release, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lc.kubectl_json(
        "-n",
        release.namespace,
        "get",
        "quantumusages",
        "-l",
        f"quantum.example.com/namespace={ns}",
    )["items"]
    return items


def record_where(
    lc: LocalCluster, release: rel.Release, ns: str, timeout: float = 120, **spec: str
) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for item in records(lc, release, ns):
            if all(item["spec"].get(k) == v for k, v in spec.items()):
                return item
        return None

    return wait_until(find, timeout, f"a QuantumUsage of {ns} with {spec}", every=1.0)


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def bell_job(name: str) -> list[dict[str, Any]]:
    """The bell-qiskit example pod as a Job (its ConfigMap with it)."""
    docs = local_images(BELL.read_text())
    out = []
    for doc in docs:
        if doc["kind"] != "Pod":
            out.append(doc)
            continue
        out.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name},
                "spec": {"backoffLimit": 0, "template": {"spec": doc["spec"]}},
            }
        )
    return out


def test_a_jobs_usage_record_matches_the_emulators_session(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    wait_until(lambda: release.allocatable() == len(ALL_LANES), 120, "every lane free")
    local_cluster.apply(bell_job("bell-usage"), "-n", ns)
    local_cluster.kubectl(
        "-n",
        ns,
        "wait",
        "--for=condition=Complete",
        "job/bell-usage",
        "--timeout=420s",
        timeout=440,
    )
    (pod,) = local_cluster.kubectl_json("-n", ns, "get", "pods", "-l", "job-name=bell-usage")[
        "items"
    ]
    name = pod["metadata"]["name"]
    result = bell_result(local_cluster.kubectl("-n", ns, "logs", name).stdout)
    (job,) = [j for j in emulator.jobs(str(result["resource"])) if j["id"] == result["job_id"]]
    sid = job["session_id"]
    wait_until(
        lambda: emulator.session(sid)["state"] == "closed",  # type: ignore[index]
        90,
        "the device plugin to release the Job's session",
    )
    session = emulator.session(sid)
    assert session is not None

    rec = record_where(local_cluster, release, ns, pod=name)
    spec = rec["spec"]
    assert spec["agent"] == "device-plugin"
    assert spec["owner"] == {"kind": "Job", "name": "bell-usage"}
    assert spec["serviceAccount"] == "default"
    assert spec["podUid"] == pod["metadata"]["uid"]
    assert spec["resourceId"] == result["resource"]
    assert spec["sessionId"] == sid
    # The emulator's own record of the session: opened at acquire, closed at release.
    assert abs(epoch(spec["acquiredAt"]) - session["created_at"]) < 1.0
    assert abs(epoch(spec["releasedAt"]) - session["closed_at"]) < 1.0
    session_jobs = [j for j in emulator.jobs(str(result["resource"])) if j["session_id"] == sid]
    vendor = spec["vendor"]
    assert vendor["state"] == "Reported"
    assert vendor["jobCount"] == len(session_jobs) == 1
    assert [j["id"] for j in vendor["jobs"]] == [result["job_id"]]
    ran = job["finished_at"] - job["started_at"]
    assert vendor["quantumSeconds"] == pytest.approx(ran, abs=0.01)
    assert spec["wallSeconds"] >= ran

    # The Event on the record, and bounded counters (namespace and backend, no pod).
    events = local_cluster.kubectl_json(
        "-n",
        release.namespace,
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={rec['metadata']['name']}",
    )["items"]
    assert [e["reason"] for e in events] == ["QPUUsageRecorded"], events
    assert f"{ns}/Job/bell-usage" in events[0]["message"]
    metrics = release.metrics("device-plugin", 9401)
    labels = {"namespace": ns, "backend": spec["backend"]}
    assert metric_value(metrics, "qpu_k8s_usage_acquisitions_total", labels) == 1
    assert metric_value(metrics, "qpu_k8s_usage_vendor_jobs_total", labels) == 1
    assert metric_value(
        metrics, "qpu_k8s_usage_vendor_quantum_seconds_total", labels
    ) == pytest.approx(vendor["quantumSeconds"])
    usage_lines = [ln for ln in metrics.splitlines() if ln.startswith("qpu_k8s_usage_")]
    assert usage_lines
    assert not any(name in ln for ln in usage_lines)
    print("\n".join(usage_lines))  # the Prometheus output, for the report

    # `qpu-k8s usage` answers who used how much this month.
    start, end = period(None, None, None, datetime.fromisoformat(spec["releasedAt"]))
    (row,) = summarize(records(local_cluster, release, ns), start, end, ["namespace", "owner"])
    assert (row.owner, row.acquisitions, row.jobs) == ("Job/bell-usage", 1, 1)


def test_dra_claim_with_no_vendor_usage_is_recorded_as_not_reported(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    emulator.set_fault("no-usage", MANILA)
    claim = rel.claim("manila", f'device.attributes["{rel.DRIVER}"].resourceId == "{MANILA}"')
    local_cluster.apply(
        [claim, rel.pod("reader", claims={"qpu": {"resourceClaimName": "manila"}})], "-n", ns
    )
    rel.wait_pod(local_cluster, ns, "reader")
    token = rel.printed_env(local_cluster, ns, "reader")[f"{MANILA}_QRMI_JOB_ACQUISITION_TOKEN"]
    local_cluster.kubectl("-n", ns, "delete", "pod", "reader", "--wait=true", "--timeout=60s")
    rec = record_where(local_cluster, release, ns, claim="manila")
    spec = rec["spec"]
    assert (spec["agent"], spec["pod"], spec["sessionId"]) == ("dra", "reader", token)
    assert (
        spec["claimUid"]
        == local_cluster.kubectl_json("-n", ns, "get", "resourceclaim", "manila")["metadata"]["uid"]
    )
    vendor = spec["vendor"]
    assert vendor["state"] == "NotReported"
    assert "no usage" in vendor["reason"]
    assert not {"jobCount", "quantumSeconds", "sessionUsageSeconds"} & set(vendor)
    session = emulator.session(token)
    assert session is not None
    assert abs(epoch(spec["releasedAt"]) - session["closed_at"]) < 1.0
    metrics = release.metrics("dra", 9402)
    labels = {"namespace": ns, "backend": spec["backend"]}
    assert metric_value(metrics, "qpu_k8s_usage_vendor_not_reported_total", labels) == 1


def _restart(lc: LocalCluster, release: rel.Release, component: str, kind: str) -> None:
    (old,) = release.pods(component)
    lc.kubectl("-n", release.namespace, "delete", "pod", old["metadata"]["name"], "--timeout=60s")
    lc.kubectl(
        "-n",
        release.namespace,
        "rollout",
        "status",
        f"{kind}/{release.fullname}-{component}",
        "--timeout=180s",
        timeout=200,
    )


def test_a_refused_record_waits_in_the_agents_journal_across_a_restart(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    def refused() -> float:
        text = release.metrics("device-plugin", 9401)
        return metric_value(text, "qpu_k8s_usage_record_errors_total", {"kind": "http_403"})

    def pending() -> float:
        return metric_value(release.metrics("device-plugin", 9401), "qpu_k8s_usage_records_pending")

    refused_before = refused()
    binding = f"{release.fullname}-device-plugin-usage"
    saved = local_cluster.kubectl_json("-n", release.namespace, "get", "rolebinding", binding)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        saved["metadata"].pop(key, None)
    local_cluster.kubectl("-n", release.namespace, "delete", "rolebinding", binding)
    try:
        wait_until(lambda: release.allocatable() == len(ALL_LANES), 120, "every lane free")
        local_cluster.apply([rel.pod("holder", limits={rel.RESOURCE: 1})], "-n", ns)
        rel.wait_pod(local_cluster, ns, "holder")
        env = rel.printed_env(local_cluster, ns, "holder")
        rid = env["QRMI_JOB_QPU_RESOURCES"]
        token = env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"]
        local_cluster.kubectl("-n", ns, "delete", "pod", "holder", "--wait=true", "--timeout=60s")
        wait_until(
            lambda: emulator.session(token)["state"] == "closed",  # type: ignore[index]
            90,
            "the holder's session released",
        )
        # Refused (403) once more than before, and kept. Other tests' records may still be
        # pending in the same agent (a vendor fetch retried for up to 5 min), and the first
        # write waits for the vendor's usage, itself retried with backoff (2+4+8+16+32 s).
        seen: dict[str, float] = {}

        def refused_and_kept() -> bool:
            seen.update(refused=refused(), pending=pending())
            return seen["refused"] > refused_before and seen["pending"] >= 1

        try:
            wait_until(refused_and_kept, 150, "the refused record pending in the device plugin")
        except AssertionError as err:
            logs = local_cluster.kubectl(
                "-n", release.namespace, "logs", "--tail=30",
                f"daemonset/{release.fullname}-device-plugin", check=False,
            ).stdout  # fmt: skip
            raise AssertionError(
                f"{err}; last seen {seen} (before: {refused_before}):\n{logs}"
            ) from None
        assert records(local_cluster, release, ns) == []
        _restart(local_cluster, release, "device-plugin", "daemonset")
    finally:
        local_cluster.apply(yaml.safe_dump(saved), "-n", release.namespace)
    rec = record_where(local_cluster, release, ns, pod="holder", timeout=180)
    assert rec["spec"]["sessionId"] == token
    assert rec["spec"]["vendor"]["state"] == "Reported"
    assert rec["spec"]["vendor"]["jobCount"] == 0

    # Records are the apiserver's: an operator restart (and the agents') leaves them be.
    _restart(local_cluster, release, "operator", "deployment")
    _restart(local_cluster, release, "dra", "daemonset")
    again = records(local_cluster, release, ns)
    assert [r["metadata"]["uid"] for r in again] == [rec["metadata"]["uid"]]


def test_malformed_and_edited_records_are_refused_naming_the_field(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    spec = UsageSpec(
        namespace="team-a",
        pod="p",
        agent=Agent.DEVICE_PLUGIN,
        node="n",
        backend="emulator-manila",
        resource_id=MANILA,
        resource_type="ibm-quantum-compute-service",
        acquisition_id="e2e-malformed",
        acquired_at="2026-12-01T00:00:00.000Z",
        released_at="2026-12-01T00:00:10.000Z",
        wall_seconds=10,
        vendor=VendorUsage.not_reported("test"),
    )
    good = usage_object(spec, release.namespace)

    def refused(obj: dict[str, Any], verb: str = "create") -> str:
        proc = local_cluster.kubectl(verb, "-f", "-", stdin=json.dumps(obj), check=False)
        assert proc.returncode != 0, f"the apiserver accepted {obj['spec']}"
        return proc.stderr

    bad = json.loads(json.dumps(good))
    bad["spec"]["vendor"] = {"state": "NotReported", "reason": "x", "jobCount": 0}
    assert "spec.vendor.reason" in refused(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["wallSeconds"] = -1
    assert "spec.wallSeconds" in refused(bad)
    local_cluster.kubectl("create", "-f", "-", stdin=json.dumps(good))
    try:
        edited = local_cluster.kubectl_json(
            "-n", release.namespace, "get", "quantumusage", good["metadata"]["name"]
        )
        edited["spec"]["wallSeconds"] = 1
        assert "immutable" in refused(edited, "replace")
    finally:
        local_cluster.kubectl(
            "-n", release.namespace, "delete", "quantumusage", good["metadata"]["name"]
        )
