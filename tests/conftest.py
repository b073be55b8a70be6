"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qpu_k8s.testing import k8s_cluster


@pytest.fixture(scope="session")
def k8s_kubeconfig() -> Iterator[Path]:
    """A real Kubernetes 1.20 control plane + kubelet (shared/k8s-local), started once.

    There is one such cluster per machine, so every API-tier test of the session shares
    it. Skips with the reason when it is not built here; CI builds it before the tests.
    ``QPU_K8S_REUSE_CLUSTER=1`` keeps a running cluster up after the session (a faster
    edit-test loop; ``up.sh`` still starts it afresh the first time).
    """
    reason = k8s_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    reuse = os.environ.get("QPU_K8S_REUSE_CLUSTER") == "1"
    try:
        yield k8s_cluster.up()
    finally:
        if not reuse:
            k8s_cluster.down()
