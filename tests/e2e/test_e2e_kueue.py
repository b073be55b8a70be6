"""The batch queue: Kueue v0.17 (built by hack/local-cluster from the Go module proxy, run by
``kueue.sh``) queues Jobs that request ``quantum.example.com/qpu`` and admits them one at a
time against one lane of quota shared by two teams, with the objects of
``manifests/examples/kueue/``. The device plugin then gives each admitted Job's pod a lane
and a vendor session at the emulator, and closes it when the pod ends.

Each Job's container prints its QRMI environment and then waits for a file that the test
writes with ``kubectl exec``, so when a Job finishes is in the test's hand, not a timer's.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testsupport import cluster, packaging
from testsupport import kueue as kq
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

from .conftest import ALL_LANES, TORINO, scan_namespace, scanned_namespace

pytestmark = pytest.mark.cluster
EXAMPLES = packaging.MANIFESTS / "examples" / "kueue"
DONE = "/tmp/qpu-job-done"
WAIT_FOR_DONE = f"while [ ! -e {DONE} ]; do sleep 0.2; done; echo JOB-DONE"


@pytest.fixture(scope="module")
def kueue(local_cluster: LocalCluster, release: rel.Release) -> Iterator[LocalCluster]:
    reason = kq.unavailable_reason()
    if reason:
        if cluster.required():
            pytest.fail(f"QPU_K8S_REQUIRE_CLUSTER=1 but {reason}")
        pytest.skip(reason)
    with kq.running(local_cluster) as lc:
        yield lc


@pytest.fixture
def teams(kueue: LocalCluster, release: rel.Release) -> Iterator[dict[str, str]]:
    """Two team namespaces (labelled for their ClusterQueues) with their LocalQueues, and
    the cluster-scoped queues of the example; all deleted afterwards, after the same
    credential scan as the ``ns`` fixture."""
    suffix = uuid.uuid4().hex[:4]
    names = {team: f"e2e-kueue-team-{team}-{suffix}" for team in ("a", "b")}
    cluster_objs = packaging.objects((EXAMPLES / "queues.yaml").read_text())
    for team, name in names.items():
        kueue.kubectl("create", "namespace", name)
        kueue.kubectl("label", "namespace", name, f"quantum.example.com/team={team}")
    kueue.apply(cluster_objs)
    local_queues = packaging.objects((EXAMPLES / "local-queues.yaml").read_text())
    for lq in local_queues:
        lq["metadata"]["namespace"] = names[lq["spec"]["clusterQueue"].removeprefix("team-")]
    kueue.apply(local_queues)
    try:
        for lq in local_queues:
            kueue.kubectl(
                "-n",
                lq["metadata"]["namespace"],
                "wait",
                "--for=condition=Active",
                f"localqueue.{kq.GROUP}/{lq['metadata']['name']}",
                "--timeout=60s",
            )
        yield names
    finally:
        leaks = [
            leak
            for name in names.values()
            for leak in scan_namespace(kueue, name, release.credential_values())
        ]
        kueue.kubectl(
            "delete", "namespace", *names.values(), "--timeout=240s", check=False, timeout=260
        )
        kueue.kubectl(
            "delete",
            *(f"{o['kind'].lower()}.{kq.GROUP}/{o['metadata']['name']}" for o in cluster_objs),
            "--ignore-not-found",
            "--timeout=120s",
            check=False,
        )
        assert not leaks, f"credential values found in the team namespaces: {leaks}"


def job(name: str) -> dict[str, Any]:
    """The example Job under another name, its container swapped for one that prints the
    QRMI environment and then waits for the test (busybox, the local image)."""
    (doc,) = packaging.objects((EXAMPLES / "job.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    container["image"] = rel.BUSYBOX_IMAGE
    container["imagePullPolicy"] = "Never"
    container["command"] = ["sh", "-c", rel.ENV_SCRIPT + WAIT_FOR_DONE]
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2
    return doc


def workload(lc: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return wait_until(
        lambda: kq.workload_of_job(lc, namespace, name),
        60,
        f"Kueue's Workload for Job {namespace}/{name}",
    )


def admitted(lc: LocalCluster, namespace: str, name: str) -> bool:
    return kq.is_true(kq.workload_of_job(lc, namespace, name), "Admitted")


def wait_admitted(lc: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    wait_until(
        lambda: admitted(lc, namespace, name), 120, f"Workload of {namespace}/{name} Admitted"
    )
    return workload(lc, namespace, name)


def wait_pending(lc: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    """Queued and told why: QuotaReserved=False with Kueue's reason in the message."""

    def check() -> dict[str, Any] | None:
        wl = kq.workload_of_job(lc, namespace, name)
        cond = kq.condition(wl, "QuotaReserved")
        return wl if cond.get("status") == "False" and cond.get("message") else None

    return wait_until(check, 60, f"Workload of {namespace}/{name} pending with a reason")


def job_pod(lc: LocalCluster, namespace: str, name: str) -> str:
    def check() -> str | None:
        pods = lc.kubectl_json("-n", namespace, "get", "pods", "-l", f"job-name={name}")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running[0]["metadata"]["name"] if running else None

    return wait_until(check, 180, f"the pod of Job {namespace}/{name} Running")


def finish(lc: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    """Let the Job's container end; wait until Kueue marks its Workload Finished."""
    pod = job_pod(lc, namespace, name)
    lc.kubectl("-n", namespace, "exec", pod, "--", "touch", DONE)
    wait_until(
        lambda: kq.is_true(kq.workload_of_job(lc, namespace, name), "Finished"),
        120,
        f"Workload of {namespace}/{name} Finished",
    )
    return workload(lc, namespace, name)


def usage(lc: LocalCluster, cq: str) -> dict[str, str]:
    """What a ClusterQueue uses and borrows of the QPU flavor."""
    status = lc.kubectl_json("get", f"clusterqueue.{kq.GROUP}", cq).get("status") or {}
    for flavor in status.get("flavorsUsage") or []:
        for res in flavor.get("resources") or []:
            if res["name"] == rel.RESOURCE:
                return {"total": str(res.get("total", 0)), "borrowed": str(res.get("borrowed", 0))}
    return {"total": "0", "borrowed": "0"}


def test_three_jobs_of_two_teams_share_one_lane_in_order(
    kueue: LocalCluster,
    release: rel.Release,
    teams: dict[str, str],
    emulator: rel.AdminClient,
) -> None:
    lc = kueue
    a, b = teams["a"], teams["b"]
    wait_until(lambda: release.allocatable() == len(ALL_LANES), 120, "every lane free")
    open_before = {s["id"] for s in emulator.sessions(open_only=True)}

    # a1 gets team A's lane at once; the webhook created it suspended, Kueue let it go.
    lc.apply([job("a1")], "-n", a)
    first = wait_admitted(lc, a, "a1")
    assert first["status"]["admission"]["clusterQueue"] == "team-a"
    tokens = {"a1": session_token(lc, a, "a1", emulator)}

    # Then b1 (team B, nothing of its own) and a2 (team A, after b1): both wait, suspended,
    # with no pod, while a1 holds the one lane of the cohort.
    lc.apply([job("b1")], "-n", b)
    wait_pending(lc, b, "b1")
    lc.apply([job("a2")], "-n", a)
    wait_pending(lc, a, "a2")
    for ns, name in ((b, "b1"), (a, "a2")):
        spec = lc.kubectl_json("-n", ns, "get", "job", name)["spec"]
        assert spec["suspend"] is True, f"{ns}/{name} runs without admission"
        pods = lc.kubectl("-n", ns, "get", "pods", "-l", f"job-name={name}", "-o", "name")
        assert not pods.stdout.strip(), f"{ns}/{name} has pods before admission"
    wait_until(
        lambda: usage(lc, "team-a") == {"total": "1", "borrowed": "0"},
        30,
        "team-a's ClusterQueue to report its one lane in use, nothing borrowed",
    )

    # a1 ends: a2 is within team A's own quota, so it goes before the older, borrowing b1.
    done = {"a1": finish(lc, a, "a1")}
    wait_until(
        lambda: admitted(lc, a, "a2") or admitted(lc, b, "b1"),
        120,
        "the next Workload admitted after a1 finished",
    )
    assert admitted(lc, a, "a2"), "b1 (borrowing) was admitted before a2 (own quota)"
    assert not admitted(lc, b, "b1"), "two Workloads admitted at once over one lane"
    tokens["a2"] = session_token(lc, a, "a2", emulator)

    # a2 ends: b1 borrows team A's idle lane through the cohort.
    done["a2"] = finish(lc, a, "a2")
    third = wait_admitted(lc, b, "b1")
    assert third["status"]["admission"]["clusterQueue"] == "team-b"
    wait_until(
        lambda: usage(lc, "team-b") == {"total": "1", "borrowed": "1"},
        30,
        "team-b's ClusterQueue to report the lane borrowed",
    )
    tokens["b1"] = session_token(lc, b, "b1", emulator)
    done["b1"] = finish(lc, b, "b1")

    # One at a time: each admission at or after the previous Workload finished (the
    # conditions have second resolution).
    order = [("a1", a), ("a2", a), ("b1", b)]
    admitted_at = [kq.condition(done[n], "Admitted")["lastTransitionTime"] for n, _ in order]
    finished_at = [kq.condition(done[n], "Finished")["lastTransitionTime"] for n, _ in order]
    for i in (1, 2):
        assert admitted_at[i] >= finished_at[i - 1], (admitted_at, finished_at)

    # Three sessions, one per Job, each closed by the device plugin's release; none left.
    assert len(set(tokens.values())) == 3, tokens
    for name, token in tokens.items():
        wait_until(
            lambda t=token: (emulator.session(t) or {}).get("state") == "closed",  # type: ignore[misc]
            90,
            f"the session of {name} released",
        )
        assert emulator.session(token)["closed_by"] == "release"  # type: ignore[index]
        assert emulator.release_calls(token) == 1
    leaked = [s for s in emulator.sessions(open_only=True) if s["id"] not in open_before]
    assert not leaked, leaked


def session_token(lc: LocalCluster, namespace: str, name: str, emulator: rel.AdminClient) -> str:
    """The acquisition token the device plugin gave the Job's pod: an open session."""
    pod = job_pod(lc, namespace, name)
    env = rel.printed_env(lc, namespace, pod)
    rid = env["QRMI_JOB_QPU_RESOURCES"]
    token = env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"]
    session = emulator.session(token)
    assert session is not None, token
    assert session["state"] != "closed", session
    return token


@pytest.mark.usefixtures("without_device_plugin")
def test_a_queued_job_gets_its_qpu_through_dra_when_no_device_plugin_serves_it(
    kueue: LocalCluster, teams: dict[str, str]
) -> None:
    """The same Job with the device plugin off: Kueue counts ``quantum.example.com/qpu`` by
    name (its DRA gates are off), and the scheduler serves it through the DeviceClass's
    ``extendedResourceName`` with a claim of its own for our driver."""
    lc, a = kueue, teams["a"]
    lc.apply([job("dra1")], "-n", a)
    wl = wait_admitted(lc, a, "dra1")
    (assignment,) = wl["status"]["admission"]["podSetAssignments"]
    assert assignment["flavors"] == {rel.RESOURCE: "emulator-qpu"}
    assert str(assignment["resourceUsage"][rel.RESOURCE]) == "1"
    pod = job_pod(lc, a, "dra1")
    status = rel.pod_phase(lc, a, pod)
    claim_name = status["extendedResourceClaimStatus"]["resourceClaimName"]
    claim = lc.kubectl_json("-n", a, "get", "resourceclaim", claim_name)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == rel.DRIVER
    env = rel.printed_env(lc, a, pod)
    assert env["QRMI_JOB_QPU_RESOURCES"]
    finish(lc, a, "dra1")


@pytest.fixture
def checked_queue(kueue: LocalCluster, release: rel.Release) -> Iterator[str]:
    """The operator serving the AdmissionCheck (the chart value on), and the example's
    checked queue with its flavor pointed at the session's Torino backend; a namespace of the
    team with its LocalQueue. All undone afterwards."""
    lc = kueue

    def operator_check(enabled: bool) -> None:
        release.upgrade(values={"operator.kueueAdmissionCheck": str(enabled).lower()})
        wanted = "on" if enabled else None

        def rolled() -> bool:
            pods = release.pods("operator")
            if len(pods) != 1 or pods[0]["status"].get("phase") != "Running":
                return False
            (container,) = pods[0]["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            return env.get("QPU_K8S_KUEUE_ADMISSION_CHECK") == wanted

        wait_until(rolled, 180, f"the operator pod with the AdmissionCheck {wanted or 'off'}")

    docs = packaging.objects((EXAMPLES / "admission-check.yaml").read_text())
    cluster_objs = [d for d in docs if d["kind"] != "LocalQueue"]
    (local_queue,) = [d for d in docs if d["kind"] == "LocalQueue"]
    for d in cluster_objs:
        if d["kind"] == "ResourceFlavor":
            d["metadata"]["annotations"]["quantum.example.com/backends"] = TORINO
    operator_check(True)
    try:
        with scanned_namespace(lc, release, f"e2e-kueue-checked-{uuid.uuid4().hex[:4]}") as ns:
            lc.kubectl("label", "namespace", ns, "quantum.example.com/team=checked")
            lc.apply(cluster_objs)
            local_queue["metadata"]["namespace"] = ns
            lc.apply([local_queue])
            # Kueue keeps a ClusterQueue inactive until the check's controller says Active.
            lc.kubectl(
                "wait",
                "--for=condition=Active",
                f"admissioncheck.{kq.GROUP}/qpu-backend-online",
                "--timeout=60s",
            )
            lc.kubectl(
                "-n",
                ns,
                "wait",
                "--for=condition=Active",
                f"localqueue.{kq.GROUP}/qpu",
                "--timeout=60s",
            )
            yield ns
    finally:
        lc.kubectl(
            "delete",
            *(f"{o['kind'].lower()}.{kq.GROUP}/{o['metadata']['name']}" for o in cluster_objs),
            "--ignore-not-found",
            "--timeout=120s",
            check=False,
        )
        operator_check(False)


def check_state(wl: dict[str, Any] | None, name: str = "qpu-backend-online") -> dict[str, Any]:
    for c in ((wl or {}).get("status") or {}).get("admissionChecks") or []:
        if c.get("name") == name:
            found: dict[str, Any] = c
            return found
    return {}


def test_a_queued_job_waits_while_its_qpu_is_paused_and_starts_when_it_is_back(
    kueue: LocalCluster,
    release: rel.Release,
    checked_queue: str,
    emulator: rel.AdminClient,
) -> None:
    """The operator's AdmissionCheck: quota reserved, check Pending with the vendor's reason
    while the flavor's backend is paused; the Job stays suspended with no pod and no session;
    the backend back online, the check turns Ready, Kueue admits and the pod gets its QPU."""
    lc, ns = kueue, checked_queue
    open_before = {s["id"] for s in emulator.sessions(open_only=True)}
    emulator.set_online("fake_torino", False, reason="scheduled maintenance", paused=True)
    try:
        wait_until(
            lambda: release.condition(TORINO).get("reason") == "BackendPaused",
            60,
            "the operator to report the Torino backend paused",
        )
        lc.apply([job("c1")], "-n", ns)

        def held() -> dict[str, Any] | None:
            wl = kq.workload_of_job(lc, ns, "c1")
            c = check_state(wl)
            return (
                wl
                if kq.is_true(wl, "QuotaReserved")
                and c.get("state") == "Pending"
                and ("is not Ready" in c.get("message", ""))
                else None
            )

        wl = wait_until(held, 90, "the Workload's quota reserved and our check Pending")
        message = check_state(wl)["message"]
        assert f"QuantumBackend {TORINO} is not Ready (BackendPaused" in message, message
        assert "scheduled maintenance" in message, message
        assert not kq.is_true(wl, "Admitted")
        assert lc.kubectl_json("-n", ns, "get", "job", "c1")["spec"]["suspend"] is True
        pods = lc.kubectl("-n", ns, "get", "pods", "-l", "job-name=c1", "-o", "name")
        assert not pods.stdout.strip(), "a pod started while the QPU was paused"
    finally:
        emulator.set_online("fake_torino", True)

    wl = wait_admitted(lc, ns, "c1")
    ready = check_state(wl)
    assert ready["state"] == "Ready", ready
    assert ready["message"] == f"QPU online: {TORINO} (flavor emulator-manila)", ready
    token = session_token(lc, ns, "c1", emulator)
    finish(lc, ns, "c1")
    wait_until(
        lambda: (emulator.session(token) or {}).get("state") == "closed",
        90,
        "the Job's session released",
    )
    assert emulator.release_calls(token) == 1
    leaked = [s for s in emulator.sessions(open_only=True) if s["id"] not in open_before]
    assert not leaked, leaked
    logs = release.logs("operator")
    assert "admission check decided" in logs
