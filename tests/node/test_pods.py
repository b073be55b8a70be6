"""Which containers can never run again, read from the node's pods (release at once)."""

from __future__ import annotations

from typing import Any

import pytest

from qpu_k8s.node.pods import pod_view

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
