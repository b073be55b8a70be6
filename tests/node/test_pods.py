"""Which containers can never run again, read from the node's pods (release at once)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import CoreApi, api_client
from qpu_k8s.node.labels import read_node
from qpu_k8s.node.pods import NodePods, pod_view
from testsupport import nodeapi
from testsupport.nodeapi import NodeApi
from testsupport.waiting import wait_for

RES = "quantum.example.com/qpu"


def pod(
    policy: str, phase: str, statuses: list[dict[str, Any]], res: bool = True
) -> dict[str, Any]:
    limits = {RES: 1} if res else {}
    return {
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {
            "restartPolicy": policy,
            "containers": [{"name": "main", "resources": {"limits": limits}}],
        },
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def ended(code: int) -> dict[str, Any]:
    return {"name": "main", "state": {"terminated": {"exitCode": code}}}


RUNNING = {"name": "main", "state": {"running": {}}}


@pytest.mark.parametrize(
    ("policy", "status", "over"),
    [
        ("Never", ended(0), True),
        ("Never", ended(1), True),
        ("OnFailure", ended(0), True),  # a success is not restarted
        ("OnFailure", ended(2), False),  # a failure is: the session is still needed
        ("Always", ended(0), False),
        ("Never", RUNNING, False),
    ],
)
def test_a_container_is_over_only_when_it_cannot_restart(
    policy: str, status: dict[str, Any], over: bool
) -> None:
    view = pod_view(pod(policy, "Running", [status]), RES)
    assert ("main" in view.finished) is over
    assert view.wants_resource


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_every_container_of_a_terminal_pod_is_over(phase: str) -> None:
    view = pod_view(pod("Always", phase, [RUNNING]), RES)
    assert view.over


def test_a_pod_without_the_resource_is_not_waited_for() -> None:
    assert not pod_view(pod("Always", "Running", [RUNNING], res=False), RES).wants_resource


def test_the_watch_shows_a_container_that_ended_and_a_deleted_pod(tmp_path: Path) -> None:
    """NodePods against a real HTTP list and watch (testsupport.nodeapi)."""
    changed = threading.Event()
    with NodeApi("n1") as api:
        client = api_client(api.kubeconfig(tmp_path / "kubeconfig"))
        api.put_pod(nodeapi.pod("ns", "a", RES))
        api.put_pod(nodeapi.pod("ns", "b", RES))
        pods = NodePods(client, "n1", RES, on_change=changed.set)
        pods.start()
        try:
            wait_for(lambda: pods.running_with_resource() == {("ns", "a"), ("ns", "b")}, 10)
            assert not pods.finished("ns", "a", "main")
            api.put_pod(nodeapi.pod("ns", "a", RES, phase="Succeeded", exit_code=0))
            wait_for(lambda: pods.finished("ns", "a", "main"), 10, "the end of a's container")
            api.delete_pod("ns", "b")
            wait_for(lambda: pods.finished("ns", "b", "main"), 10, "b deleted")
            assert pods.running_with_resource() == set()
            assert changed.is_set()
        finally:
            pods.stop()
            client.close()


def test_core_reads_raise_the_clients_api_exception(tmp_path: Path) -> None:
    with NodeApi("n1", {"zone": "a"}) as api:
        client = api_client(api.kubeconfig(tmp_path / "kubeconfig"))
        try:
            assert read_node(client, "n1")[0] == {"zone": "a"}
            with pytest.raises(ApiException) as err:
                CoreApi(client).get("/api/v1/nodes/elsewhere", timeout=5)
            assert err.value.status == 404
        finally:
            client.close()
