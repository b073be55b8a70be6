"""The device plugin as a host process beside the real 1.37 kubelet (hack/local-cluster).

The agent runs on the host as ``qpu-k8s device-plugin`` with the kubelet's real paths, under
a resource name of its own (``quantum.example.com/qpu-test``: the chart's device plugin may
serve ``quantum.example.com/qpu`` on the same kubelet), so the test controls it: its
emulator (on 127.0.0.1; the pod only prints its environment), its faults, its shutdown.
Checks: node capacity, a pod requesting one QPU runs with the env contract, the credential
is in the container env and nowhere in the API objects, deleting the pod releases the
session at the emulator, a failed acquire fails the pod's admission with our message.
tests/e2e has the chart's device plugin with the in-cluster emulator and the paper's script.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.emulator import Emulator
from testsupport.deviceplugin import Layout, PluginProcess
from testsupport.emulator import ibm_backend, session_of
from testsupport.release import BUSYBOX_IMAGE, ENV_SCRIPT, STAY
from testsupport.waiting import wait_for

pytestmark = pytest.mark.cluster
RESOURCE = "quantum.example.com/qpu-test"
SOCKET = "qpu-k8s-quantum.example.com_qpu-test.sock"

KUBELET_DP_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_POD_RESOURCES = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
NODE = "127.0.0.1"


@pytest.fixture
def core(k8s_kubeconfig: Path) -> client.CoreV1Api:
    api = config.new_client_from_config(config_file=str(k8s_kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"dp-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


def capacity(core: client.CoreV1Api) -> str | None:
    node = core.read_node(NODE)
    return (node.status.allocatable or {}).get(RESOURCE)


def bell_pod(name: str) -> dict[str, Any]:
    """Prints its QRMI environment (credentials as sha256 digests) and stays."""
    script = ENV_SCRIPT + STAY
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "job",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "resources": {"limits": {RESOURCE: "1"}},
                }
            ],
        },
    }


def test_real_kubelet_pod_gets_a_qpu_and_deleting_it_releases_the_session(  # noqa: PLR0917
    emu: Emulator,
    layout: Layout,
    k8s_kubeconfig: Path,
    core: client.CoreV1Api,
    namespace: str,
    plugin_process: Callable[..., PluginProcess],
) -> None:
    api_key = emu.config.first_api_key
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila", lanes=2),
            # Node-bound, matched through the Node's labels read from the apiserver.
            ibm_backend(
                emu,
                "onprem",
                "fake_nairobi",
                access="node-bound",
                nodeSelector={"kubernetes.io/hostname": NODE},
            ),
        ]
    )
    plugin = plugin_process(
        "--device-plugin-dir", str(KUBELET_DP_DIR),
        "--resource-name", RESOURCE,
        "--pod-resources-socket", str(KUBELET_POD_RESOURCES),
        "--node-name", NODE,
        "--kubeconfig", str(k8s_kubeconfig),
        "--release-grace", "1",
        "--kubelet-restart-hold", "5",
    )  # fmt: skip
    try:
        plugin.wait_log("registered with the kubelet", timeout=30)
        # Node capacity: one device per lane of both backends (3), all healthy.
        wait_for(lambda: capacity(core) == "3", 60, f"node allocatable {RESOURCE}=3")

        core.create_namespaced_pod(namespace, bell_pod("bell"))
        pod_log: dict[str, str] = {}

        def env_printed() -> bool:
            pod = core.read_namespaced_pod("bell", namespace)
            if pod.status.phase in ("Failed", "Succeeded"):
                raise AssertionError(f"pod ended early: {pod.status}")
            if pod.status.phase != "Running":
                return False
            pod_log["text"] = core.read_namespaced_pod_log("bell", namespace)
            return "ENV-DONE" in pod_log["text"]

        wait_for(env_printed, 90, "the pod to run and print its QRMI environment")
        env = dict(line.split("=", 1) for line in pod_log["text"].splitlines() if "=" in line)
        rid = env["QRMI_JOB_QPU_RESOURCES"]
        assert rid in ("fake_manila", "fake_nairobi")
        assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
        assert env["SLURM_JOB_QPU_RESOURCES"] == rid
        assert env[f"{rid}_QRMI_IBM_QCS_ENDPOINT"] == f"{emu.url}/api/v1"
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        assert env[f"{rid}_QRMI_IBM_QCS_IAM_APIKEY"] == f"sha256:{digest}"  # the documented path
        token = env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"]
        session = session_of(emu, token)
        assert session.is_open
        assert session.backend == rid
        wait_for(
            lambda: (
                [(a.state, str(a.holder)) for a in layout.acquisitions()]
                == [(AcqState.BOUND, f"{namespace}/bell/job")]
            ),
            30,
            "the acquisition bound to the pod's container",
        )

        # The credential is in no API object: pod (spec, annotations, status), events.
        pod_json = json.dumps(core.read_namespaced_pod("bell", namespace).to_dict(), default=str)
        events = json.dumps(core.list_namespaced_event(namespace).to_dict(), default=str)
        assert api_key not in pod_json
        assert api_key not in events
        assert api_key not in pod_log["text"]
        assert token not in pod_json  # the env reaches the container, not the pod object

        core.delete_namespaced_pod("bell", namespace)
        assert emu.state.wait_until(lambda s: not session_of(emu, token).is_open, 60), (
            "deleting the pod did not release the session"
        )
        assert session_of(emu, token).closed_by == "release"
        wait_for(
            lambda: [a.state for a in layout.acquisitions()] == [AcqState.RELEASED],
            10,
            "the checkpoint to record the release",
        )
        # A failed acquire fails the pod's admission with our message (and no secret).
        emu.set_fault("reject-auth")
        core.create_namespaced_pod(namespace, bell_pod("denied"))

        def admission_failed() -> Any:
            status = core.read_namespaced_pod("denied", namespace).status
            return status if status.phase == "Failed" else None

        status = wait_for(admission_failed, 60, "the pod to fail admission")
        assert status.reason == "UnexpectedAdmissionError"
        assert "acquire of backend" in status.message
        assert "[auth]" in status.message
        assert "Nothing is held" in status.message
        assert api_key not in status.message
        emu.clear_faults()
        assert emu.state.open_sessions() == []

        metrics_text = plugin.metrics()
        assert re.search(
            r'qpu_k8s_deviceplugin_releases_total\{[^}]*result="ok"[^}]*\} 1\.0', metrics_text
        )
        assert plugin.terminate() == 0
        for where, text in (("plugin log", plugin.text()), ("metrics", metrics_text)):
            assert api_key not in text, f"the credential leaked into the {where}"
    finally:
        if plugin.proc is not None and plugin.proc.poll() is None:
            plugin.terminate()  # a clean stop removes our socket from the kubelet's directory
        (KUBELET_DP_DIR / SOCKET).unlink(missing_ok=True)
