"""Acquire before bind on the real 1.37 cluster (issue 13 item 1): the chart's DRA driver
acquires the QRMI session of a device with binding conditions before the scheduler binds
the pod, a failed acquire sends the claim to another QPU, a claim deleted before binding
gives its session back, and no session is left open.

Two node-bound backends of the in-cluster emulator opt in (``acquireBeforeBind: true``);
the session's node-bound ``e2e-torino`` does not, so one run also measures claim creation
to pod Running both ways. Their probes are rare (10 min), so a fault set at the emulator is
first met by the acquire, not by a probe.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client, watch

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until
from testsupport.processes import metric_value

pytestmark = pytest.mark.cluster
ACQUIRED = f"{rel.DRIVER}/acquired"
FAILED = f"{rel.DRIVER}/acquire-failed"
ATTR = 'device.attributes["qpu.quantum.example.com"]'
LAGOS, NAIROBI = "abb-lagos", "abb-nairobi"  # fake_lagos, fake_nairobi
DRA_METRICS_PORT = 9402


@dataclass
class Seen:
    """What a watch of the namespace saw, with monotonic times."""

    claims: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    pods: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def devices(self, claim: str) -> list[str]:
        """The devices the claim was allocated, in order, each once per allocation."""
        out: list[str] = []
        last: str | None = None
        for _, name, obj in self.claims:
            if name != claim:
                continue
            results = (
                ((obj.get("status") or {}).get("allocation") or {}).get("devices") or {}
            ).get("results") or [{}]
            device = results[0].get("device")
            if device != last and device is not None:
                out.append(device)
            last = device
        return out

    def running_at(self, pod: str) -> float | None:
        return next(
            (t for t, n, o in self.pods if n == pod and o["status"].get("phase") == "Running"),
            None,
        )


@pytest.fixture
def seen(local_cluster: LocalCluster, ns: str) -> Iterator[Seen]:
    """Watches of the namespace's claims and pods for the test's duration."""
    out = Seen()
    api = local_cluster.api()
    stop = threading.Event()
    watches: list[watch.Watch] = []

    def follow(list_fn: Any, args: tuple[Any, ...], into: list[Any]) -> None:
        while not stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            watches.append(w)
            try:
                for ev in w.stream(list_fn, *args, timeout_seconds=30):  # type: ignore[no-untyped-call]
                    obj = ev["object"]
                    if not isinstance(obj, dict):
                        obj = api.sanitize_for_serialization(obj)
                    into.append((time.monotonic(), obj["metadata"]["name"], obj))
            except Exception:  # connection cut at the end of the test
                stop.wait(0.2)

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    threads = [
        threading.Thread(
            target=follow,
            args=(
                custom.list_namespaced_custom_object,
                ("resource.k8s.io", "v1", ns, "resourceclaims"),
                out.claims,
            ),
            daemon=True,
        ),
        threading.Thread(
            target=follow, args=(core.list_namespaced_pod, (ns,), out.pods), daemon=True
        ),
    ]
    for t in threads:
        t.start()
    try:
        yield out
    finally:
        stop.set()
        for w in watches:
            w.stop()  # type: ignore[no-untyped-call]
        api.close()


@pytest.fixture(scope="module")
def opted_in(release: rel.Release) -> Iterator[list[str]]:
    """Two node-bound backends with ``acquireBeforeBind: true``, published by the node's
    driver with the binding conditions."""
    docs = []
    for name, rid in ((LAGOS, "fake_lagos"), (NAIROBI, "fake_nairobi")):
        doc = rel.backend_doc(release, name, rid, node_bound=True, probe_seconds=600)
        doc["spec"]["acquireBeforeBind"] = True
        docs.append(doc)
    with rel.backends(release, docs) as names:
        wait_until(
            lambda: all(
                release.devices(node=NODE).get(f"{n}-lane-0", {}).get("bindingConditions")
                == [ACQUIRED]
                for n in names
            ),
            240,
            "the opted-in devices published with their binding conditions",
            every=1.0,
        )
        yield names


def _claim(lc: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = lc.kubectl_json("-n", ns, "get", "resourceclaim", name)
    return got


def _entry(claim: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [
        e for e in (claim.get("status") or {}).get("devices") or [] if e["driver"] == rel.DRIVER
    ]
    return dict(entry)


def _true(claim: dict[str, Any]) -> set[str]:
    """The condition types True on the claim's devices of our driver."""
    return {
        c["type"]
        for e in (claim.get("status") or {}).get("devices") or []
        if e["driver"] == rel.DRIVER
        for c in e.get("conditions") or []
        if c["status"] == "True"
    }


def _open_sessions(emulator: rel.AdminClient, *backends: str) -> list[dict[str, Any]]:
    return [s for b in backends for s in emulator.sessions(backend=b, open_only=True)]


def _binding_metric(release: rel.Release, result: str) -> float:
    text = release.metrics("dra", DRA_METRICS_PORT)
    return metric_value(text, "qpu_k8s_dra_acquire_before_bind_total", {"result": result})


def _run_pod(lc: LocalCluster, ns: str, seen: Seen, name: str, expression: str) -> float:
    """Claim and pod created at once; seconds from the claim's creation to pod Running."""
    start = time.monotonic()
    lc.apply(
        [rel.claim(name, expression), rel.pod(name, claims={"qpu": {"resourceClaimName": name}})],
        "-n",
        ns,
    )
    rel.wait_pod(lc, ns, name)
    running = wait_until(lambda: seen.running_at(name), 30, f"the watch to see {name} Running")
    return running - start


@pytest.mark.usefixtures("opted_in")
def test_acquired_before_binding_and_timed_against_acquire_in_prepare(
    local_cluster: LocalCluster,
    release: rel.Release,
    ns: str,
    emulator: rel.AdminClient,
    seen: Seen,
) -> None:
    lc = local_cluster
    given_back = _binding_metric(release, "given_back")
    before_bind: list[float] = []
    in_prepare: list[float] = []
    for i in range(3):  # alternated, so both see the same cluster
        before_bind.append(
            _run_pod(lc, ns, seen, f"abb-{i}", f'{ATTR}.resourceId == "fake_nairobi"')
        )
        in_prepare.append(_run_pod(lc, ns, seen, f"aip-{i}", f'{ATTR}.resourceId == "fake_torino"'))

        # The scheduler waited for the condition: it was True before the pod was bound.
        acquired_at = next(t for t, n, o in seen.claims if n == f"abb-{i}" and ACQUIRED in _true(o))
        bound_at = next(t for t, n, o in seen.pods if n == f"abb-{i}" and o["spec"].get("nodeName"))
        assert acquired_at < bound_at
        claim = _claim(lc, ns, f"abb-{i}")
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert result["bindingConditions"] == [ACQUIRED]
        assert result["bindingFailureConditions"] == [FAILED]
        # After the prepare: Ready and the binding condition, with the session it holds.
        claim = wait_until(
            lambda i=i: (c := _claim(lc, ns, f"abb-{i}")) and {"Ready", ACQUIRED} <= _true(c) and c,
            30,
            "the prepared claim's status",
        )
        entry = _entry(claim)
        # The session the driver acquired before binding is the one the pod was given.
        env = rel.printed_env(lc, ns, f"abb-{i}")
        assert env["QRMI_JOB_QPU_RESOURCES"] == "fake_nairobi"
        assert env["fake_nairobi_QRMI_JOB_ACQUISITION_TOKEN"] == entry["data"]["sessionId"]
        assert emulator.session(entry["data"]["sessionId"])["state"] != "closed"
        plain = wait_until(
            lambda i=i: (c := _claim(lc, ns, f"aip-{i}")) and "Ready" in _true(c) and c,
            30,
            "the plain claim's status",
        )
        assert "bindingConditions" not in plain["status"]["allocation"]["devices"]["results"][0]
        assert _true(plain) == {"Ready"}
        for name in (f"abb-{i}", f"aip-{i}"):
            lc.kubectl("-n", ns, "delete", "pod", name, "--wait=true", "--timeout=60s")
            lc.kubectl("-n", ns, "delete", "resourceclaim", name, "--wait=true", "--timeout=60s")
    print(
        "claim creation -> pod Running, seconds: acquire before bind "
        f"{[round(t, 2) for t in before_bind]} (median {statistics.median(before_bind):.2f}), "
        f"acquire in prepare {[round(t, 2) for t in in_prepare]} "
        f"(median {statistics.median(in_prepare):.2f})"
    )
    # Unprepare released every session; nothing was given back (every claim was bound).
    wait_until(
        lambda: not _open_sessions(emulator, "fake_nairobi", "fake_torino"), 60, "no open session"
    )
    assert _binding_metric(release, "given_back") == given_back


@pytest.mark.usefixtures("opted_in")
def test_claim_deleted_before_binding_gives_its_session_back(
    local_cluster: LocalCluster,
    release: rel.Release,
    ns: str,
    emulator: rel.AdminClient,
    seen: Seen,
) -> None:
    """The vendor is slow (each fake_lagos request takes 6 s), so the pod and claim are
    deleted while the acquire is in flight, before any binding; the session it then gets is
    given back (an owed release, paid at once)."""
    lc = local_cluster
    given_back = _binding_metric(release, "given_back")
    before = {s["id"] for s in emulator.sessions(backend="fake_lagos")}
    emulator.set_fault("slow", backend="fake_lagos", seconds=6)
    try:
        lc.apply(
            [
                rel.claim("gone", f'{ATTR}.resourceId == "fake_lagos"'),
                rel.pod("gone", claims={"qpu": {"resourceClaimName": "gone"}}),
            ],
            "-n",
            ns,
        )
        wait_until(lambda: seen.devices("gone"), 60, "the claim allocated")
        pod = lc.kubectl_json("-n", ns, "get", "pod", "gone")
        assert not pod["spec"].get("nodeName"), "the pod was bound before the acquire finished"
        lc.kubectl("-n", ns, "delete", "pod", "gone", "--grace-period=0", "--force")
        lc.kubectl("-n", ns, "delete", "resourceclaim", "gone", "--wait=true", "--timeout=60s")
        created = wait_until(
            lambda: (
                [s for s in emulator.sessions(backend="fake_lagos") if s["id"] not in before]
                or None
            ),
            60,
            "the session the in-flight acquire got",
        )
    finally:
        emulator.clear_faults()
    (session,) = created
    wait_until(
        lambda: emulator.session(session["id"])["state"] == "closed", 60, "the session released"
    )
    assert emulator.release_calls(session["id"]) == 1
    assert _binding_metric(release, "given_back") == given_back + 1
    assert not any(o["spec"].get("nodeName") for _, n, o in seen.pods if n == "gone")
    assert not _open_sessions(emulator, "fake_lagos", "fake_nairobi")


@pytest.mark.usefixtures("opted_in")
def test_failed_acquire_places_the_claim_on_another_qpu(
    local_cluster: LocalCluster,
    release: rel.Release,
    ns: str,
    emulator: rel.AdminClient,
    seen: Seen,
) -> None:
    """The vendor of the first QPU the scheduler picks is down (every request of fake_lagos
        answered 503 at the emulator): the driver's acquire fails, it reprobes (the backend
        leaves the slice) and sets the failure condition; the scheduler places the claim on the
        other QPU, whose acquire succeeds, and the pod runs there. Last in the module: the failing
    backend stays withdrawn until its next probe (10 min)."""
    lc = local_cluster
    failed = _binding_metric(release, "failed")
    emulator.set_fault("error5xx", backend="fake_lagos")
    try:
        either = f'{ATTR}.resourceId in ["fake_lagos", "fake_nairobi"]'
        start = time.monotonic()
        lc.apply(
            [
                rel.claim("moved", either),
                rel.pod("moved", claims={"qpu": {"resourceClaimName": "moved"}}),
            ],
            "-n",
            ns,
        )
        rel.wait_pod(lc, ns, "moved", timeout=180)
        running = wait_until(lambda: seen.running_at("moved"), 30, "the watch to see it Running")
        print(f"claim creation -> pod Running after one failed acquire: {running - start:.2f} s")
        assert seen.devices("moved") == [f"{LAGOS}-lane-0", f"{NAIROBI}-lane-0"], (
            "expected the first allocation on the failing QPU, then the other one"
        )
        assert rel.printed_env(lc, ns, "moved")["QRMI_JOB_QPU_RESOURCES"] == "fake_nairobi"
        assert _binding_metric(release, "failed") == failed + 1
        # The failure condition the scheduler acted on: the error kind as reason, a message
        # naming the backend and the fix (the scheduler clears it when it re-places).
        condition = next(
            c
            for _, name, obj in seen.claims
            if name == "moved"
            for e in (obj.get("status") or {}).get("devices") or []
            for c in e.get("conditions") or []
            if c["type"] == FAILED
        )
        assert condition["reason"] == "VendorUnavailable"
        assert LAGOS in condition["message"]
        assert "placed again" in condition["message"]
        # The reprobe withdrew the failing backend from the node's slice.
        assert f"{LAGOS}-lane-0" not in release.devices(node=NODE)
        assert not _open_sessions(emulator, "fake_lagos")
    finally:
        emulator.clear_faults()
    lc.kubectl("-n", ns, "delete", "pod", "moved", "--wait=true", "--timeout=60s")
    lc.kubectl("-n", ns, "delete", "resourceclaim", "moved", "--wait=true", "--timeout=60s")
    wait_until(
        lambda: not _open_sessions(emulator, "fake_lagos", "fake_nairobi"), 60, "no open session"
    )
