"""The DRA driver in the test process (or as a CLI process) against the real 1.37 apiserver,
on a Node object of its own with the fake kubelet: slices and their validation, calibration
and health changes, claims with per-claim Secrets, SIGTERM. Where a claim is needed, the
test writes the allocation the scheduler would (tests/e2e has the real scheduler, kubelet
and containerd with the chart's driver: CEL selectors, taints, shared claims, CDI)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient
from qpu_k8s.dra.agent import DraDriver
from qpu_k8s.fakekubelet import ClaimRef, FakeDRAKubelet
from qpu_k8s.resourceslices.attributes import from_api
from qpu_k8s.resourceslices.build import GROUP, PLURAL
from qpu_k8s.resourceslices.policy import UnhealthyMode
from testsupport.dra import DraNode as NodeEnv
from testsupport.dra import node_backends, validate
from testsupport.emulator import SECRETS as SECRET_VALUES
from testsupport.emulator import USER_KEY as ALICE_KEY
from testsupport.names import DRIVER
from testsupport.waiting import wait_for as poll_until

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples" / "dra"


def as_listed(s: dict[str, Any]) -> dict[str, Any]:
    """A slice from a LIST (whose items carry no apiVersion/kind) as a whole object, without
    the server-set metadata, for the offline schema check."""
    return {"apiVersion": f"{GROUP}/v1", "kind": "ResourceSlice", "metadata": {}} | {
        k: v for k, v in s.items() if k not in ("metadata", "apiVersion", "kind")
    }


def _slices(api: client.ApiClient, node: str) -> list[dict[str, Any]]:
    items = as_object(client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, "v1", PLURAL))
    return [s for s in items["items"] if s["spec"].get("nodeName") == node]


def _devices(api: client.ApiClient, node: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in _slices(api, node) for d in s["spec"].get("devices") or []}


def _generation(api: client.ApiClient, node: str) -> int:
    return max((s["spec"]["pool"]["generation"] for s in _slices(api, node)), default=0)


ALL_NODE_BOUND = {
    "ibm-torino-lane-0",
    "ibm-torino-lane-1",
    "ibm-manila-lane-0",
    "pasqal-fresnel-lane-0",
    "pasqal-emu-free-lane-0",
}


def _wait_devices(
    api: client.ApiClient, node: str, names: set[str], *, with_qubits: bool = True
) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        devs = _devices(api, node)
        if set(devs) != names:
            return None
        if with_qubits and not all("qubits" in d["attributes"] for d in devs.values()):
            return None
        return devs

    return poll_until(check, 20, f"slices of {node} holding exactly {sorted(names)}", 0.05)


@pytest.fixture
def agent_factory(
    k8s_api: client.ApiClient, k8s_kubeconfig: Path, node_env: NodeEnv, k8s_node: str
) -> Iterator[Any]:
    agents: list[DraDriver] = []

    def make(**overrides: Any) -> DraDriver:
        cfg = node_env.agent_config(kubeconfig=k8s_kubeconfig, node_labels=None, **overrides)
        agent = DraDriver(cfg)
        agent.start()
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.stop()


def test_slices_hold_node_bound_backends_with_attributes_and_follow_changes(
    k8s_api: client.ApiClient, node_env: NodeEnv, agent_factory: Any
) -> None:
    agent = agent_factory()
    devs = _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND)
    for s in _slices(k8s_api, node_env.node):
        validate(as_listed(s))
        assert s["spec"]["driver"] == DRIVER
        assert s["spec"]["pool"]["resourceSliceCount"] == 1
        assert s["metadata"]["ownerReferences"][0]["kind"] == "Node"
    torino = from_api(devs["ibm-torino-lane-1"]["attributes"])
    assert torino["qubits"] == 133
    assert torino["lane"] == 1
    assert torino["resourceId"] == "fake_torino"
    assert torino["vendor"] == "ibm"
    assert isinstance(torino["twoQubitErrorPpm"], int)
    assert isinstance(torino["t1Us"], int)
    fresnel = from_api(devs["pasqal-fresnel-lane-0"]["attributes"])
    assert fresnel["qubits"] == 80
    assert fresnel["technology"] == "neutral-atom"
    assert fresnel["simulator"] is False
    assert from_api(devs["pasqal-emu-free-lane-0"]["attributes"])["simulator"] is True

    # Config change: three manila lanes -> one more generation, new devices.
    gen = _generation(k8s_api, node_env.node)
    backends = node_backends(node_env.emu, node_env.node)
    next(b for b in backends if b["name"] == "ibm-manila")["spec"]["lanes"] = 3
    node_env.write_backends(backends)
    _wait_devices(
        k8s_api, node_env.node, ALL_NODE_BOUND | {"ibm-manila-lane-1", "ibm-manila-lane-2"}
    )
    gen2 = _generation(k8s_api, node_env.node)
    assert gen2 > gen

    # The kubelet wipes the node's slices when it restarts: they come back at once.
    custom = client.CustomObjectsApi(k8s_api)
    for s in _slices(k8s_api, node_env.node):
        custom.delete_cluster_custom_object(GROUP, "v1", PLURAL, s["metadata"]["name"])
    _wait_devices(
        k8s_api, node_env.node, ALL_NODE_BOUND | {"ibm-manila-lane-1", "ibm-manila-lane-2"}
    )
    assert _generation(k8s_api, node_env.node) > gen2
    assert agent.slices is not None
    assert agent.slices.last_publish is not None


class DriftingClient(QrmiClient):
    """The real QRMI client, with the backend's calibration drifting between refreshes."""

    t1_factor = 1.0

    def target(self) -> dict[str, Any]:
        t = super().target()
        for qubit in (t.get("properties") or {}).get("qubits") or []:
            for item in qubit:
                if item.get("name") == "T1":
                    item["value"] *= DriftingClient.t1_factor
        return t


def test_calibration_change_updates_quality_attributes(
    k8s_api: client.ApiClient, k8s_kubeconfig: Path, node_env: NodeEnv, k8s_node: str
) -> None:
    DriftingClient.t1_factor = 1.0
    cfg = node_env.agent_config(kubeconfig=k8s_kubeconfig, node_labels=None)
    agent = DraDriver(
        cfg, client_factory=lambda b, c: DriftingClient(b, c, timeouts=CallTimeouts.uniform(10))
    )
    agent.start()
    try:
        devs = _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND)
        t1 = devs["ibm-torino-lane-0"]["attributes"]["t1Us"]["int"]
        gen = _generation(k8s_api, node_env.node)
        DriftingClient.t1_factor = 0.5
        assert agent.calibration is not None
        assert agent.calibration.refresh(force=True) is True
        poll_until(
            lambda: (
                True
                if _devices(k8s_api, node_env.node)["ibm-torino-lane-0"]["attributes"]["t1Us"][
                    "int"
                ]
                == round(t1 / 2)
                else None
            ),
            10,
            "halved T1 in the slice",
        )
        assert _generation(k8s_api, node_env.node) > gen
        assert agent.calibration.refresh(force=True) is False  # unchanged: no new generation
    finally:
        agent.stop()


@pytest.mark.parametrize("mode", [UnhealthyMode.WITHDRAW, UnhealthyMode.TAINT])
def test_unhealthy_backend_is_withdrawn_or_tainted(
    k8s_api: client.ApiClient,
    node_env: NodeEnv,
    agent_factory: Any,
    mode: UnhealthyMode,
) -> None:
    emu = node_env.emu
    agent = agent_factory(unhealthy=mode)
    _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND)
    emu.set_online("fake_manila", False, reason="cooldown")
    try:
        agent.registry.probe_now("ibm-manila")
        if mode is UnhealthyMode.WITHDRAW:
            _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND - {"ibm-manila-lane-0"})
        else:

            def tainted() -> list[Any] | None:
                return _devices(k8s_api, node_env.node)["ibm-manila-lane-0"].get("taints")

            taints = poll_until(tainted, 10, "a taint on ibm-manila-lane-0")
            # The apiserver stamps timeAdded (1.37); the rest is what the driver wrote.
            assert taints[0].pop("timeAdded")
            assert taints == [
                {"key": f"{DRIVER}/unhealthy", "value": "offline", "effect": "NoSchedule"}
            ]
    finally:
        emu.set_online("fake_manila", True)
    agent.registry.probe_now("ibm-manila")
    devs = _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND)
    poll_until(
        lambda: (
            True
            if not _devices(k8s_api, node_env.node)["ibm-manila-lane-0"].get("taints")
            else None
        ),
        10,
        "the taint gone",
    )
    assert devs


def _create_claim(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    validate(doc)
    return as_object(
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, "v1", namespace, "resourceclaims", doc
        )
    )


def _allocate(
    api: client.ApiClient, claim: dict[str, Any], pool: str, device: str
) -> dict[str, Any]:
    """Write the allocation the scheduler would: the device, and the claim's opaque config
    (the apiserver validates the status, so a malformed allocation fails here)."""
    config = [
        {"source": "FromClaim", "requests": c.get("requests", []), "opaque": c["opaque"]}
        for c in claim["spec"]["devices"].get("config") or []
    ]
    claim["status"] = {
        "allocation": {
            "devices": {
                "results": [{"request": "qpu", "driver": DRIVER, "pool": pool, "device": device}],
                "config": config,
            }
        }
    }
    return as_object(
        client.CustomObjectsApi(api).replace_namespaced_custom_object_status(
            GROUP, "v1", claim["metadata"]["namespace"], "resourceclaims",
            claim["metadata"]["name"], claim,
        )
    )  # fmt: skip


def _example(name: str, kind: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all((EXAMPLES / name).read_text()):
        if doc["kind"] == kind:
            out: dict[str, Any] = doc
            return out
    raise KeyError(f"{kind} in {name}")


def test_claim_parameters_example_with_a_secret_in_the_claims_namespace(
    k8s_api: client.ApiClient,
    node_env: NodeEnv,
    agent_factory: Any,
    namespace: str,
    kubelet: FakeDRAKubelet,
) -> None:
    emu = node_env.emu
    agent = agent_factory()
    kubelet.wait_for_registration(DRIVER)
    _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND)
    client.CoreV1Api(k8s_api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="alice-ibm"),
            data={"QRMI_IBM_QCS_IAM_APIKEY": base64.b64encode(ALICE_KEY.encode()).decode()},
        ),
    )
    doc = _example("claim-parameters.yaml", "ResourceClaim")
    claim = _create_claim(k8s_api, namespace, doc)
    got = _allocate(k8s_api, claim, node_env.node, "ibm-torino-lane-0")
    assert got["status"]["allocation"]["devices"]["config"][0]["source"] == "FromClaim"
    ref = ClaimRef(namespace, claim["metadata"]["uid"], doc["metadata"]["name"])
    result = kubelet.node_prepare_resources([ref])[ref.uid]
    assert result.error == ""
    env = agent.cdi.read_env(ref.uid)
    rid = env["QRMI_JOB_QPU_RESOURCES"]
    assert env[f"{rid}_QRMI_IBM_QCS_IAM_APIKEY"] == ALICE_KEY
    session = emu.state.session(env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"])
    assert (session.mode, session.max_ttl) == ("batch", 3600)
    # Nothing the apiserver holds carries a credential.
    blob = repr(_slices(k8s_api, node_env.node)) + repr(
        client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
            GROUP, "v1", namespace, "resourceclaims", doc["metadata"]["name"]
        )
    )
    assert not any(secret in blob for secret in SECRET_VALUES)
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert not emu.state.session(session.id).is_open


def test_cli_runs_until_sigterm_and_cleans_up(
    k8s_kubeconfig: Path, node_env: NodeEnv, k8s_node: str, kubelet: FakeDRAKubelet
) -> None:
    root = node_env.root
    args = [
        sys.executable, "-m", "qpu_k8s.cli", "dra-plugin",
        "--node-name", node_env.node,
        "--config", str(node_env.config),
        "--credentials-dir", str(root / "creds"),
        "--kubeconfig", str(k8s_kubeconfig),
        "--metrics-address", "127.0.0.1:0",
        "--resync-seconds", "5",
    ]  # fmt: skip
    env = {
        **os.environ,
        "QPU_K8S_PLUGINS_DIR": str(root / "plugins"),
        "QPU_K8S_REGISTRY_DIR": str(root / "registry"),
        "QPU_K8S_CDI_DIR": str(root / "cdi"),
        "QPU_K8S_STATE_DIR": str(root / "state"),
        "QPU_K8S_BOOT_ID_FILE": str(node_env.boot_id_file),
        "POD_UID": "5f0c2a6e-1111-2222-3333-444455556666",
    }
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reg = kubelet.wait_for_registration(DRIVER, timeout=60)
        assert reg.endpoint.endswith("dra-5f0c2a6e1111.sock")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    kubelet.wait_for_deregistration(DRIVER)
    assert not Path(reg.endpoint).exists()
    assert not reg.socket_path.exists()
    assert proc.stderr is not None
    logs = proc.stderr.read().decode()
    assert '"msg": "DRA driver stopped"' in logs
    assert not any(secret in logs for secret in SECRET_VALUES)


def test_claim_status_lands_on_the_real_claim_never_on_a_recreated_one(
    k8s_api: client.ApiClient,
    node_env: NodeEnv,
    agent_factory: Any,
    namespace: str,
    kubelet: FakeDRAKubelet,
) -> None:
    """The status the driver applies passes the real apiserver's validation, is owned by the
    node's field manager on the status subresource, and the claim's UID in the applied
    object keeps a late write off a claim recreated under the same name."""
    from qpu_k8s.dra.claims import KubeClaims
    from qpu_k8s.dra.claimstatus import StatusWriteError

    custom = client.CustomObjectsApi(k8s_api)
    agent = agent_factory()
    kubelet.wait_for_registration(DRIVER)
    _wait_devices(k8s_api, node_env.node, ALL_NODE_BOUND)
    doc = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "held"},
        "spec": {
            "devices": {"requests": [{"name": "qpu", "exactly": {"deviceClassName": DRIVER}}]}
        },
    }
    claim = _create_claim(k8s_api, namespace, doc)
    _allocate(k8s_api, claim, node_env.node, "ibm-torino-lane-0")
    ref = ClaimRef(namespace, claim["metadata"]["uid"], "held")
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    token = agent.cdi.read_env(ref.uid)["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"]

    def status() -> list[dict[str, Any]] | None:
        got = as_object(
            custom.get_namespaced_custom_object(GROUP, "v1", namespace, "resourceclaims", "held")
        )
        return (got.get("status") or {}).get("devices") or None

    (entry,) = poll_until(status, 20, "status.devices on the claim", 0.05)
    assert (entry["pool"], entry["device"]) == (node_env.node, "ibm-torino-lane-0")
    assert entry["data"]["sessionId"] == token
    assert entry["conditions"][0]["type"] == "Ready"
    got = as_object(
        custom.get_namespaced_custom_object(GROUP, "v1", namespace, "resourceclaims", "held")
    )
    managers = {(m["manager"], m.get("subresource")) for m in got["metadata"]["managedFields"]}
    assert (f"{DRIVER}/{node_env.node}", "status") in managers
    assert not [s for s in SECRET_VALUES if s in repr(got)]
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}

    # Recreated under the same name: a late write for the old UID is refused, permanently.
    custom.delete_namespaced_custom_object(GROUP, "v1", namespace, "resourceclaims", "held")
    poll_until(
        lambda: (
            not [
                c
                for c in as_object(
                    custom.list_namespaced_custom_object(GROUP, "v1", namespace, "resourceclaims")
                )["items"]
                if c["metadata"]["uid"] == ref.uid
            ]
        ),
        30,
        "the old claim gone",
        0.05,
    )
    again = _create_claim(k8s_api, namespace, doc)
    _allocate(k8s_api, again, node_env.node, "ibm-torino-lane-0")
    writer = KubeClaims(k8s_api)
    with pytest.raises(StatusWriteError) as refused:
        writer.apply_device_status(namespace, "held", ref.uid, [entry], "test-late-writer")
    assert refused.value.permanent, refused.value
    # 1.37 answers a UID that differs from the stored object's as an invalid update of an
    # immutable field (422), not as a failed precondition (409).
    assert refused.value.kind == "invalid", refused.value
    assert "metadata.uid" in str(refused.value)
    fresh = as_object(
        custom.get_namespaced_custom_object(GROUP, "v1", namespace, "resourceclaims", "held")
    )
    assert "devices" not in (fresh.get("status") or {})
