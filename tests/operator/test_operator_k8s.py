"""API tier: the whole operator (``kopf.testing.KopfRunner``) against a real 1.20 apiserver.

What each test proves:

* ``test_crd_on_a_real_120_apiserver``: what 1.20 does with ``x-kubernetes-validations``
  (accepted and silently pruned; its kubectl refuses the field, so the 1.20 rendering is
  the one to apply there), that the structural schema is accepted and enforced with errors
  naming the field, that defaults are applied, that ``kubectl explain`` and the printer
  columns work. CEL itself is not evaluated by 1.20: the CEL tier is test_operator_crd.py.
* ``test_examples_reach_ready_and_deletion_cleans_up``: ``kubectl apply -f`` of
  ``manifests/examples/backends/emulator.yaml``, unchanged, reaches Ready=True with qubits;
  a broken one explains why and recovers; node ConfigMap and cluster-wide ResourceSlices
  (resource.k8s.io/v1 CRDs) follow; ``kubectl delete`` cleans up; no credential value in
  status, Events, ConfigMap, annotations or logs; liveness and metrics endpoints answer.
* ``test_faults_shared_claims_and_finalizer_order``: vendor hang/offline/bad credentials and
  a spec only CEL would refuse, as conditions; shared ResourceClaims from a namespace label,
  live acquisitions from a reservation (the test allocator plays the scheduler); deletion
  waits for a held claim, then removes slices, claims and node config; restart resumes
  from status without re-probing everything.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core import logs
from qpu_k8s.emulator.server import Emulator, running_emulator
from qpu_k8s.operator import crd
from qpu_k8s.operator import shared_claims as sc
from qpu_k8s.operator.configmap import DATA_KEY
from qpu_k8s.operator.controller import Controller, OperatorConfig
from qpu_k8s.operator.handlers import FINALIZER, build_registry, make_settings
from qpu_k8s.operator.kube import Connection, Kube
from qpu_k8s.operator.slices import BackendSlices, pool_name
from qpu_k8s.resourceslices.build import pool_label
from testsupport import k8s_cluster
from testsupport.operator import cr, free_port, install_crd, ready_condition
from testsupport.resource_api import Allocator

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "backends" / "emulator.yaml"
GROUP, VERSION, PLURAL = "quantum.example.com", "v1alpha1", "quantumbackends"
CM_NAME = "qpu-k8s-node-config"
DRIVER = "qpu.quantum.example.com"
RUN_LABEL = "qpu-test-run"
WRONG_KEY = "wrong-apikey-k8s-77e1"


def wait(pred: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy, or fail after ``within`` seconds."""
    end = time.monotonic() + within
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.1)  # polling the apiserver against a deadline


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(k8s_cluster.kubectl_120()), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


class Api:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def backend(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_cluster_custom_object(
                GROUP, VERSION, PLURAL, name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return obj

    def create(self, obj: dict[str, Any]) -> None:
        self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, obj)

    def delete(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

    def cond(self, name: str, ctype: str = "Ready") -> dict[str, Any]:
        return ready_condition((self.backend(name) or {}).get("status"), ctype)

    def secret(self, ns: str, name: str, data: dict[str, str]) -> None:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        )
        self.core.create_namespaced_secret(ns, body)

    def node_config(self, ns: str) -> dict[str, Any]:
        try:
            cm = self.core.read_namespaced_config_map(CM_NAME, ns)
        except ApiException:
            return {}
        return yaml.safe_load((cm.data or {}).get(DATA_KEY, "")) or {}

    def slices(self, backend: str) -> list[dict[str, Any]]:
        sel = f"qpu.quantum.example.com/pool={pool_label(DRIVER, pool_name(backend))}"
        out = self.custom.list_cluster_custom_object(
            "resource.k8s.io", "v1", "resourceslices", label_selector=sel
        )
        return list(out.get("items", []))

    def events(self, *names: str) -> list[Any]:
        """Events about these QuantumBackends (cluster-scoped: they live in "default")."""
        items = self.core.list_namespaced_event("default").items
        return [
            e
            for e in items
            if e.involved_object.kind == "QuantumBackend" and e.involved_object.name in names
        ]


def ensure_device_class(api: Api) -> None:
    """The project's DeviceClass (manifests/deviceclass.yaml), cluster-scoped and shared."""
    body = yaml.safe_load((REPO / "manifests" / "deviceclass.yaml").read_text())
    try:
        api.custom.create_cluster_custom_object("resource.k8s.io", "v1", "deviceclasses", body)
    except ApiException as err:
        if err.status != 409:
            raise


def force_cleanup(api: Api, names: list[str]) -> None:
    """Remove leftovers even if no operator runs any more (finalizer patched away)."""
    for name in names:
        obj = api.backend(name)
        if obj is None:
            continue
        api.delete(name)
        if FINALIZER in (obj["metadata"].get("finalizers") or []):
            with contextlib.suppress(ApiException):
                api.custom.patch_cluster_custom_object(
                    GROUP, VERSION, PLURAL, name, {"metadata": {"finalizers": []}}
                )


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, namespace: str, selector: str = "", **cfg: Any
) -> Iterator[tuple[Controller, KopfRunner, int]]:
    conn = Connection.load(kubeconfig)
    kube = Kube(conn, timeout=10)
    settings = {
        "namespace": namespace,
        "dra": True,
        "backend_selector": selector,
        "debounce": 0.1,
        "probe_timeout": 2.0,
        "secret_retry": 1.0,
        "metrics_address": "127.0.0.1:0",
        **cfg,
    }
    ocfg = OperatorConfig(**settings)
    ctl = Controller(ocfg, kube, slices=BackendSlices(kube, ocfg.driver))
    port = free_port()
    args = ["run", "-A", "--standalone", "--liveness", f"http://127.0.0.1:{port}/healthz"]
    try:
        with KopfRunner(
            args, registry=build_registry(ctl, conn), settings=make_settings(), timeout=60
        ) as runner:
            wait(lambda: ctl._tasks, 30, "operator start-up")
            yield ctl, runner, port
    finally:
        kube.close()


@contextlib.contextmanager
def emulator_for_example() -> Iterator[tuple[Emulator, str]]:
    """The emulator on the example's port (18080); elsewhere if that port is taken."""
    try:
        with running_emulator(port=18080, noise=False) as emu:
            yield emu, EXAMPLE.read_text()
            return
    except OSError:
        pass
    with running_emulator(noise=False) as emu:
        yield emu, EXAMPLE.read_text().replace("127.0.0.1:18080", f"127.0.0.1:{emu.port}")


def test_crd_on_a_real_120_apiserver(op_api: client.ApiClient, k8s_kubeconfig: Path) -> None:
    ext = client.ApiextensionsV1Api(op_api)
    try:
        # The CEL rendering, sent without client-side validation: 1.20 accepts it...
        install_crd(op_api, crd.crd(cel=True))
        stored = op_api.sanitize_for_serialization(
            ext.read_custom_resource_definition(crd.CRD_NAME)
        )
        # ...and silently drops every x-kubernetes-validations (it does not know the field).
        assert "x-kubernetes-validations" not in json.dumps(stored)
        schema = stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert (
            schema["properties"]["spec"]
            == crd.crd(cel=False)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
                "spec"
            ]
        )
    finally:
        install_crd(op_api, crd.crd(cel=False))
    # A 1.20 kubectl validates client-side and refuses the field: apply the 1.20 rendering.
    full = kubectl(
        k8s_kubeconfig,
        "apply",
        "--dry-run=client",
        "-f",
        str(REPO / "manifests/crd/quantumbackends.yaml"),
        check=False,
    )
    assert full.returncode != 0
    assert "x-kubernetes-validations" in full.stderr
    kubectl(
        k8s_kubeconfig, "apply", "-f", str(REPO / "manifests/crd/quantumbackends-k8s-1.20.yaml")
    )

    api = Api(op_api)
    good = {
        "resourceId": "fake_manila",
        "type": "ibm-quantum-compute-service",
        "config": {
            "QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:9/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": "http://127.0.0.1:9",
            "QRMI_IBM_QCS_SERVICE_CRN": "crn:x",
        },
        "credentialsSecretRef": {"name": "c"},
    }
    # The structural schema is enforced, and errors name the field.
    cases = {
        "spec.lanes": {**good, "lanes": 0},
        "spec.type": {**good, "type": "d-wave"},
        "spec.resourceId": {**good, "resourceId": "has space"},
        "spec.credentialsSecretRef.name": {**good, "credentialsSecretRef": {"name": "Bad_Name"}},
        "spec.probeIntervalSeconds": {**good, "probeIntervalSeconds": 1},
    }
    for field, spec in cases.items():
        with pytest.raises(ApiException) as err:
            api.create(cr("crd-invalid", spec))
        assert err.value.status == 422
        assert field in err.value.body, err.value.body
    # Defaults are applied by the apiserver.
    name = "crd-defaults"
    try:
        api.create(cr(name, good))
        spec = api.backend(name)["spec"]  # type: ignore[index]
        assert (spec["access"], spec["lanes"], spec["probeIntervalSeconds"]) == ("shared", 1, 60)
        out = kubectl(k8s_kubeconfig, "get", "quantumbackends", name).stdout
        assert out.split()[:7] == ["NAME", "TYPE", "ACCESS", "QUBITS", "LANES", "READY", "AGE"]
        # The apiserver publishes a new CRD's OpenAPI a few seconds after it is Established.
        explained = wait(
            lambda: (
                kubectl(k8s_kubeconfig, "explain", "quantumbackend.spec.lanes", check=False).stdout
            ),
            30,
            "kubectl explain to know the CRD",
        )
        assert "How many pods may hold this QPU at once" in explained
    finally:
        api.delete(name)


def test_examples_reach_ready_and_deletion_cleans_up(
    op_api: client.ApiClient, k8s_kubeconfig: Path, op_ns: str
) -> None:
    api = Api(op_api)
    names = ["emulator-manila", "emulator-fresnel"]
    force_cleanup(api, [*names, "emulator-broken"])
    captured = io.StringIO()
    logs.setup("debug", "json", captured)
    secret_values: list[str] = []
    try:
        with (
            emulator_for_example() as (emu, manifest),
            running_operator(k8s_kubeconfig, op_ns) as (ctl, runner, port),
        ):
            creds = {**emu.ibm_credentials(), **emu.pasqal_credentials()}
            secret_values = list(creds.values())
            api.secret(op_ns, "qpu-emulator-credentials", creds)
            path = Path(op_ns).with_suffix(".yaml")
            tmp = Path("/tmp") / path
            tmp.write_text(manifest)
            kubectl(k8s_kubeconfig, "apply", "-f", str(tmp))
            # A broken one: its Secret does not exist (yet).
            broken = yaml.safe_load(manifest.split("---")[0])
            broken["metadata"]["name"] = "emulator-broken"
            broken["spec"]["credentialsSecretRef"] = {"name": "not-created-yet"}
            api.create(broken)

            for n in names:
                wait(lambda n=n: api.cond(n).get("status") == "True", 60, f"{n} Ready")
            kubectl(
                k8s_kubeconfig,
                "wait",
                "--for=condition=Ready",
                "quantumbackend/emulator-manila",
                "--timeout=10s",
            )
            assert api.backend("emulator-manila")["status"]["qubits"] == 5  # type: ignore[index]
            assert api.backend("emulator-fresnel")["status"]["qubits"] == 80  # type: ignore[index]
            row = kubectl(
                k8s_kubeconfig, "get", "qb", "emulator-manila", "--no-headers"
            ).stdout.split()
            assert row[1:6] == ["ibm-quantum-compute-service", "shared", "5", "2", "True"]

            acc = wait(
                lambda: (
                    api.cond("emulator-broken", "Accessible").get("reason") == "SecretNotFound"
                    and api.cond("emulator-broken", "Accessible")
                )
            )
            assert "not-created-yet" in acc["message"]
            assert "QRMI_IBM_QCS_IAM_APIKEY" in acc["message"]
            api.secret(op_ns, "not-created-yet", emu.ibm_credentials())
            wait(
                lambda: api.cond("emulator-broken").get("status") == "True",
                30,
                "broken one recovers",
            )

            # Node config and cluster-wide slices follow.
            wait(
                lambda: (
                    {b["name"] for b in api.node_config(op_ns).get("backends", [])}
                    >= {*names, "emulator-broken"}
                )
            )
            slices = wait(lambda: api.slices("emulator-manila"), 20, "slices")
            spec = slices[0]["spec"]
            assert spec["allNodes"] is True
            assert spec["driver"] == DRIVER
            assert [d["name"] for d in spec["devices"]] == [
                "emulator-manila-lane-0",
                "emulator-manila-lane-1",
            ]
            assert spec["devices"][0]["attributes"]["qubits"] == {"int": 5}
            for s in slices:
                kubernetes_validate.validate(
                    {**s, "metadata": {"name": s["metadata"]["name"]}}, "1.34", strict=True
                )
            reasons = {
                (e.type, e.reason, e.involved_object.name)
                for e in api.events(*names, "emulator-broken")
            }
            assert ("Normal", "Online", "emulator-manila") in reasons
            assert ("Warning", "SecretNotFound", "emulator-broken") in reasons

            health = json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
            )
            assert health["operator"]["backends"] >= 3
            mport = ctl._metrics_server.server_port
            metrics = (
                urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5)
                .read()
                .decode()
            )
            assert 'qpu_k8s_operator_backend_ready{backend="emulator-manila"} 1.0' in metrics
            assert "qpu_k8s_operator_probe_duration_seconds_bucket" in metrics

            before = {n: api.backend(n) for n in [*names, "emulator-broken"]}
            kubectl(k8s_kubeconfig, "delete", "-f", str(tmp), "--timeout=60s")
            api.delete("emulator-broken")
            wait(
                lambda: all(api.backend(n) is None for n in [*names, "emulator-broken"]),
                60,
                "deleted",
            )
            wait(lambda: api.node_config(op_ns).get("backends") == [], 20, "node config emptied")
            assert api.slices("emulator-manila") == []
            tmp.unlink()
    finally:
        logging.getLogger().handlers.clear()
        force_cleanup(api, [*names, "emulator-broken"])

    everything = json.dumps(before, default=str) + captured.getvalue() + runner.output
    everything += json.dumps(
        [op_api.sanitize_for_serialization(e) for e in api.events(*names, "emulator-broken")]
    )
    for v in secret_values:
        assert v not in everything, "a credential value leaked"


def test_faults_shared_claims_and_finalizer_order(
    op_api: client.ApiClient, k8s_kubeconfig: Path, op_ns: str, run_id: str
) -> None:
    api = Api(op_api)
    core = api.core
    team = f"team-{run_id}"
    names = [f"{p}-{run_id}" for p in ("ok", "hang", "down", "badkey", "nosel")]
    ok, hang, down, badkey, nosel = names
    labels = {RUN_LABEL: run_id}
    with running_emulator(noise=False) as emu:
        api.secret(op_ns, "emu", {**emu.ibm_credentials(), **emu.pasqal_credentials()})
        api.secret(op_ns, "bad", {"QRMI_IBM_QCS_IAM_APIKEY": WRONG_KEY})

        def spec(backend: str, ref: str = "emu", **extra: Any) -> dict[str, Any]:
            return {
                "resourceId": backend,
                "type": "ibm-quantum-compute-service",
                "config": emu.ibm_config(backend),
                "credentialsSecretRef": {"name": ref},
                "probeIntervalSeconds": 300,
                **extra,
            }

        emu.set_fault("hang", "fake_nairobi")
        emu.set_online("fake_lagos", False, reason="cryostat warm-up")
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=team, labels={f"{sc.NS_LABEL_PREFIX}{ok}": "true"}
                )
            )
        )
        try:
            with running_operator(
                k8s_kubeconfig, op_ns, f"{RUN_LABEL}={run_id}", deletion_grace=60
            ) as (ctl, _, _):
                api.create(cr(ok, spec("fake_manila"), **labels))
                api.create(cr(hang, spec("fake_nairobi"), **labels))
                api.create(cr(down, spec("fake_lagos"), **labels))
                api.create(cr(badkey, spec("fake_manila", "bad"), **labels))
                # 1.20 cannot run the CEL rules: the operator reports what they would refuse.
                api.create(cr(nosel, spec("fake_manila", access="node-bound"), **labels))

                def reason(n: str) -> str:
                    return str(api.cond(n).get("reason", ""))

                wait(lambda: reason(ok) == "Online", 30)
                wait(lambda: reason(hang) == "ProbeTimeout", 30)
                wait(lambda: reason(down) == "BackendOffline", 30)
                wait(lambda: reason(badkey) == "AuthenticationFailed", 30)
                wait(lambda: reason(nosel) == "InvalidSpec", 30)
                assert "cryostat warm-up" in api.cond(down)["message"]
                assert "spec.nodeSelector" in api.cond(nosel)["message"]
                assert nosel not in {b["name"] for b in api.node_config(op_ns).get("backends", [])}
                assert api.slices(hang) == []  # unhealthy: devices withdrawn

                # Shared claim from the namespace label; a reservation is a live acquisition.
                claim = wait(
                    lambda: api.custom.list_namespaced_custom_object(
                        "resource.k8s.io", "v1", team, "resourceclaims"
                    )["items"],
                    20,
                    "shared claim",
                )[0]
                assert claim["metadata"]["name"] == sc.claim_name(ok)
                kubernetes_validate.validate(
                    {k: claim[k] for k in ("apiVersion", "kind", "spec")}
                    | {"metadata": {"name": "x"}},
                    "1.34",
                    strict=True,
                )
                wait(lambda: api.slices(ok), 20, "slices of the shared backend")
                ensure_device_class(api)
                Allocator(op_api).allocate(
                    team, sc.claim_name(ok), reserved_for=[{"name": "pod-a", "uid": "uid-a"}]
                )
                wait(
                    lambda: (api.backend(ok) or {}).get("status", {}).get("liveAcquisitions") == 1,
                    20,
                )
                assert api.backend(ok)["status"]["sharedClaims"] == 1  # type: ignore[index]

                # Restart: status is the memory; nothing is re-probed before its interval.
                probed_at = api.backend(ok)["status"]["lastProbeTime"]  # type: ignore[index]
                since = api.cond(ok)["lastTransitionTime"]
            with running_operator(
                k8s_kubeconfig, op_ns, f"{RUN_LABEL}={run_id}", deletion_grace=60
            ) as (ctl, _, _):
                wait(lambda: ok in ctl.entries, 20, "resumed")
                assert api.backend(ok)["status"]["lastProbeTime"] == probed_at  # type: ignore[index]
                assert api.cond(ok)["lastTransitionTime"] == since

                # Deletion waits for the held claim (the claim controller's protection is
                # played by a finalizer here), keeping the node config until it is released.
                api.custom.patch_namespaced_custom_object(
                    "resource.k8s.io",
                    "v1",
                    team,
                    "resourceclaims",
                    sc.claim_name(ok),
                    {"metadata": {"finalizers": ["resource.kubernetes.io/delete-protection"]}},
                )
                api.delete(ok)
                wait(lambda: api.slices(ok) == [], 20, "slices removed first")
                time_left = api.backend(ok)
                assert time_left is not None
                assert time_left["metadata"].get("deletionTimestamp")
                assert ok in {b["name"] for b in api.node_config(op_ns).get("backends", [])}
                api.custom.patch_namespaced_custom_object(
                    "resource.k8s.io",
                    "v1",
                    team,
                    "resourceclaims",
                    sc.claim_name(ok),
                    {"metadata": {"finalizers": []}},
                )
                wait(lambda: api.backend(ok) is None, 30, "backend gone")
                assert ok not in {b["name"] for b in api.node_config(op_ns).get("backends", [])}
                assert (
                    api.custom.list_namespaced_custom_object(
                        "resource.k8s.io", "v1", team, "resourceclaims"
                    )["items"]
                    == []
                )
                for n in names[1:]:
                    api.delete(n)
                wait(lambda: all(api.backend(n) is None for n in names), 30, "all deleted")
        finally:
            emu.clear_faults()
            force_cleanup(api, names)
            with contextlib.suppress(ApiException):
                core.delete_namespace(team)
    events = [op_api.sanitize_for_serialization(e) for e in api.events(*names)]
    assert any(e["reason"] == "AuthenticationFailed" for e in events)
    assert WRONG_KEY not in json.dumps(events)
