"""Fixtures shared by every test tier: the real cluster here, the emulator, the fake kubelet
parts, node layouts and agent starters in ``testsupport.fixtures`` (declared once there)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport import cluster, tools

# A real-cluster test's first use of the session fixtures may build images, start the
# cluster and install the chart (minutes on 2 shared cores); pytest-timeout counts fixture
# set-up, so these tests get a longer limit unless they set their own.
CLUSTER_TEST_TIMEOUT = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("cluster") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(CLUSTER_TEST_TIMEOUT))


pytest_plugins = ["testsupport.fixtures"]


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[cluster.LocalCluster]:
    """The real Kubernetes 1.37 of hack/local-cluster, up once per session.

    One cluster per machine, so every real-cluster test of the session shares it (each in
    namespaces of its own). The project images are rebuilt from this checkout first when
    their content changed (images.sh is keyed on it) and loaded. A cluster this session
    started is stopped at the end unless ``QPU_K8S_REUSE_CLUSTER=1``; one that was already
    running is reused and left running. Skips with the reason when it cannot run here
    (not root, not built); fails instead under ``QPU_K8S_REQUIRE_CLUSTER=1`` (CI).
    """
    reason = cluster.unavailable_reason()
    if reason:
        if cluster.required():
            pytest.fail(f"QPU_K8S_REQUIRE_CLUSTER=1 but {reason}")
        pytest.skip(reason)
    try:
        helm = tools.helm()
    except tools.ToolError as err:
        pytest.fail(f"{err} (python -m testsupport.tools install fetches helm)")
    with cluster.session(helm_bin=helm) as lc:
        yield lc


@pytest.fixture(scope="session")
def k8s_kubeconfig(local_cluster: cluster.LocalCluster) -> Path:
    """The admin kubeconfig of the real cluster."""
    return local_cluster.kubeconfig
