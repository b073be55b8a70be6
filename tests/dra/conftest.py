"""Fixtures for the DRA tests: the resource.k8s.io CRDs on the real 1.20 apiserver."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from qpu_k8s.testing import k8s_cluster, resource_api


@pytest.fixture(scope="session")
def k8s_kubeconfig(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The shared cluster; ``QPU_K8S_REUSE_CLUSTER=1`` reuses a running one and leaves it up
    (for a quick edit-test loop, and so as not to stop a cluster another session uses)."""
    if os.environ.get("QPU_K8S_REUSE_CLUSTER") == "1":
        reason = k8s_cluster.unavailable_reason()
        if reason:
            pytest.skip(reason)
        yield k8s_cluster.up()
        return
    yield request.getfixturevalue("_shared_k8s_kubeconfig")


@pytest.fixture(scope="session")
def _shared_k8s_kubeconfig() -> Iterator[Path]:
    reason = k8s_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        yield k8s_cluster.up()
    finally:
        k8s_cluster.down()


@pytest.fixture(scope="session")
def k8s_api(k8s_kubeconfig: Path) -> client.ApiClient:
    """An admin client with the resource.k8s.io/v1 CRDs installed."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(k8s_kubeconfig)
    )
    resource_api.install(api)
    return api


@pytest.fixture
def namespace(k8s_api: client.ApiClient) -> Iterator[str]:
    name = f"dra-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def pool_name() -> str:
    """A pool of its own per test: slices are cluster-scoped and the cluster is shared."""
    return f"pool-{uuid.uuid4().hex[:8]}"
