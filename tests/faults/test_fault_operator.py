"""Fault 5 (operator): the apiserver is unreachable for a while under ``qpu-k8s operator``.

The operator runs as a real process against the real 1.37 apiserver of hack/local-cluster
through the cuttable TCP proxy (``netproxy``): refused for a while, then partitioned (calls
accepted and never answered, open connections frozen); the chart's operator, if the
session installed it, is scaled to zero meanwhile (two operators would both act on the
test's backends). Meanwhile a backend goes offline at the vendor, a
QuantumBackend is created and another deleted. When the apiserver is back the operator
catches up with all of it, and no object exists twice: one node ConfigMap, at most one
ResourceSlice per shared pool, no slice or config entry of the deleted backend.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.emulator import Emulator
from qpu_k8s.resourceslices.build import GROUP as RESOURCE_GROUP
from qpu_k8s.resourceslices.build import PLURAL
from testsupport import REPO
from testsupport.cluster import LocalCluster
from testsupport.emulator import IBM_KEY, SECRETS
from testsupport.faults import elapsed, ibm, record_result
from testsupport.netproxy import TcpProxy
from testsupport.processes import terminate_or_kill
from testsupport.release import NAMESPACE, RELEASE
from testsupport.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
GROUP, VERSION, KIND_PLURAL = "quantum.example.com", "v1alpha1", "quantumbackends"
BACKENDS = 6


class _NoStatus:
    conditions: list[Any] = []


@pytest.fixture(scope="module")
def admin(k8s_kubeconfig: Path) -> client.ApiClient:
    """Admin client; the QuantumBackend CRD installed (the chart's, when it is there)."""
    from qpu_k8s.operator import crd

    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(k8s_kubeconfig)
    )
    ext = client.ApiextensionsV1Api(api)
    body = crd.crd()
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)  # type: ignore[arg-type]
    except ApiException as err:
        if err.status != 409:
            raise
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(name).status or _NoStatus).conditions
            or []
        ),
        30,
        "the QuantumBackend CRD established",
    )
    return api


@pytest.fixture
def no_chart_operator(local_cluster: LocalCluster) -> Iterator[None]:
    """The chart's operator stopped while this test's own runs (back afterwards)."""
    with local_cluster.scaled_down(NAMESPACE, f"{RELEASE}-operator"):
        yield


@pytest.fixture
def op_ns(admin: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(admin)
    name = f"qpu-flt-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_secret(
        name,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="ibm-creds"),
            data={"QRMI_IBM_QCS_IAM_APIKEY": base64.b64encode(IBM_KEY.encode()).decode()},
        ),
    )
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture
def proxy(k8s_kubeconfig: Path, root: Path) -> Iterator[tuple[TcpProxy, Path]]:
    doc = yaml.safe_load(k8s_kubeconfig.read_text())
    server = doc["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").partition(":")
    tcp = TcpProxy(host, int(port or 443))
    doc["clusters"][0]["cluster"]["server"] = f"https://{host}:{tcp.port}"
    path = root / "proxy.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    yield tcp, path
    tcp.close()


class Cluster:
    """What the operator wrote, read with the admin client (never through the proxy)."""

    def __init__(self, api: client.ApiClient, run: str, ns: str, cm: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.run, self.ns, self.cm = run, ns, cm

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "QuantumBackend",
            "metadata": {"name": name, "labels": {"qpu-fault-run": self.run}},
            "spec": spec,
        }
        self.custom.create_cluster_custom_object(GROUP, VERSION, KIND_PLURAL, body)

    def delete(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.delete_cluster_custom_object(GROUP, VERSION, KIND_PLURAL, name)

    def backends(self) -> dict[str, dict[str, Any]]:
        items = as_object(
            self.custom.list_cluster_custom_object(
                GROUP, VERSION, KIND_PLURAL, label_selector=f"qpu-fault-run={self.run}"
            )
        ).get("items", [])
        return {o["metadata"]["name"]: o for o in items}

    def ready(self, name: str) -> tuple[str, str]:
        obj = self.backends().get(name) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                return str(c.get("status")), str(c.get("reason"))
        return "", ""

    def config_maps(self) -> list[Any]:
        return [
            c
            for c in self.core.list_namespaced_config_map(self.ns).items
            if c.metadata is not None and c.metadata.name == self.cm
        ]

    def node_config(self) -> set[str]:
        cms = self.config_maps()
        if not cms:
            return set()
        doc = yaml.safe_load(next(iter((cms[0].data or {}).values()), "") or "") or {}
        return {b["name"] for b in doc.get("backends") or []}

    def slices(self) -> dict[str, list[str]]:
        """Pool name -> slice names, for this run's backends."""
        items = as_object(self.custom.list_cluster_custom_object(RESOURCE_GROUP, "v1", PLURAL)).get(
            "items", []
        )
        out: dict[str, list[str]] = {}
        for s in items:
            pool = s["spec"]["pool"]["name"]
            if self.run in pool:
                out.setdefault(pool, []).append(s["metadata"]["name"])
        return out


@pytest.mark.usefixtures("no_chart_operator")
def test_apiserver_unreachable_operator_catches_up_without_duplicates(
    emu: Emulator, admin: client.ApiClient, op_ns: str, proxy: tuple[TcpProxy, Path], root: Path
) -> None:
    tcp, kubeconfig = proxy
    run = uuid.uuid4().hex[:6]
    cm = f"node-config-{run}"
    cluster = Cluster(admin, run, op_ns, cm)
    rids = ["fake_manila", "fake_nairobi", "fake_lagos"]
    names = [f"flt-{run}-{i}" for i in range(BACKENDS)]
    for i, name in enumerate(names):
        doc = ibm(emu, name, rids[i % len(rids)])
        doc["spec"]["access"] = "shared"
        cluster.create(name, doc["spec"])
    log_path = root / "operator.log"
    argv = [
        sys.executable, "-m", "qpu_k8s.cli", "operator",
        "--kubeconfig", str(kubeconfig),
        "--namespace", op_ns,
        "--node-config-map", cm,
        "--metrics-address", "127.0.0.1:0",
        "--liveness-address", "",
        "--probe-timeout", "2",
        "--dra", "on",
        "--backend-selector", f"qpu-fault-run={run}",
        "--log-level", "debug",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ)
        )
    try:

        def all_ready() -> bool:
            return all(cluster.ready(n)[0] == "True" for n in names)

        wait_for(all_ready, 90, "every backend Ready")
        wait_for(lambda: cluster.node_config() == set(names), 30, "the node config")
        wait_for(lambda: len(cluster.slices()) == BACKENDS, 30, "one pool per shared backend")

        def converged(expected: set[str], offline: set[str]) -> Callable[[], bool]:
            def check() -> bool:
                if set(cluster.backends()) != expected or cluster.node_config() != expected:
                    return False
                for n in expected:
                    want = ("False", "BackendOffline") if n in offline else ("True", None)
                    status, reason = cluster.ready(n)
                    if status != want[0] or (want[1] and reason != want[1]):
                        return False
                return True

            return check

        # -- refused: changes pile up while the operator cannot see or write ------------------
        tcp.set_mode("down")
        emu.set_online("fake_manila", False, reason="maintenance")  # names[0] and names[3]
        cluster.delete(names[1])  # held by the operator's finalizer until it is back
        new = f"flt-{run}-new"
        doc = ibm(emu, new, "fake_torino")
        doc["spec"]["access"] = "shared"
        cluster.create(new, doc["spec"])
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)  # the outage; the operator must outlive it
        tcp.set_mode("up")
        back = time.monotonic()
        expected = {n for n in names if n != names[1]} | {new}
        wait_for(
            converged(expected, {names[0], names[3]}),
            60,
            "the operator to catch up after the outage",
        )
        caught_up_down = elapsed(back)

        # -- partition: calls accepted and never answered ------------------------------------
        tcp.set_mode("blackhole")
        emu.set_online("fake_manila", True)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=12.0)  # the partition; the operator must outlive it
        tcp.set_mode("up")
        back = time.monotonic()
        wait_for(converged(expected, set()), 90, "the operator to catch up after the partition")
        caught_up_hole = elapsed(back)

        # No object twice: one ConfigMap, one pool (at most one slice each) per backend.
        assert len(cluster.config_maps()) == 1
        # A backend's status is written before its slice is published (Controller._apply):
        # the pool of the backend that came back online may land just after its condition.
        shared = {f"shared/{n}" for n in expected}

        def every_pool() -> dict[str, list[str]] | None:
            found = cluster.slices()
            return found if set(found) == shared else None

        pools = wait_for(every_pool, 30, "one pool per backend after the partition")
        assert all(len(v) == 1 for v in pools.values()), pools
        assert not any(names[1] in p for p in pools), pools
        assert len(pools) == len(expected)
    finally:
        for n in [*names, f"flt-{run}-new"]:
            cluster.delete(n)
        wait_for(lambda: not cluster.backends(), 60, "the backends deleted")
        terminate_or_kill(proc, 30)
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert not any(s in text for s in SECRETS)
    record_result(
        "apiserver-unavailable-operator",
        backends=BACKENDS,
        outage_refused_s=5.0,
        caught_up_after_refused_s=caught_up_down,
        outage_partition_s=12.0,
        caught_up_after_partition_s=caught_up_hole,
        duplicates=0,
        secrets_exposed=0,
    )
