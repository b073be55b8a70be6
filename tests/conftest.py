"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qpu_k8s.testing import k8s_cluster


@pytest.fixture(scope="session")
def k8s_kubeconfig() -> Iterator[Path]:
    """A real Kubernetes 1.20 control plane + kubelet (shared/k8s-local), started once.

    Skips with the reason when it is not built here; CI builds it before the tests.
    """
    reason = k8s_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        yield k8s_cluster.up()
    finally:
        k8s_cluster.down()
