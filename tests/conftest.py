"""Fixtures shared by every test tier: the real cluster here, the emulator, the fake kubelet
parts, node layouts and agent starters in ``testsupport.fixtures`` (declared once there)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport import k8s_cluster

pytest_plugins = ["testsupport.fixtures"]


@pytest.fixture(scope="session")
def k8s_kubeconfig() -> Iterator[Path]:
    """A real Kubernetes 1.20 control plane + kubelet (shared/k8s-local), started once.

    There is one such cluster per machine, so every API-tier test of the session shares
    it. A cluster that is already up (another session's) is reused and left running; one
    this session started is stopped at the end, unless ``QPU_K8S_REUSE_CLUSTER=1`` (a
    faster edit-test loop). Skips with the reason when it is not built here; CI builds it.
    """
    reason = k8s_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    started_here = not k8s_cluster.is_running()
    path = k8s_cluster.up()
    try:
        yield path
    finally:
        if started_here and os.environ.get("QPU_K8S_REUSE_CLUSTER") != "1":
            k8s_cluster.down()
