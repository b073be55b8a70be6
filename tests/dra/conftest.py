"""Fixtures for the DRA tests: the fake kubelet, the emulator, and the real cluster's
apiserver (resource.k8s.io/v1 as Kubernetes 1.37 serves it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from qpu_k8s.fakekubelet import FakeDRAKubelet
from testsupport.dra import DraNode, node_backends
from testsupport.names import NODE_LABEL


@pytest.fixture(scope="session")
def k8s_api(k8s_kubeconfig: Path) -> client.ApiClient:
    """An admin client of the real cluster."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(k8s_kubeconfig)
    )
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


# -- the driver on a test node -----------------------------------------------------------
@pytest.fixture
def node_env(dra_node: DraNode) -> DraNode:
    """This folder's node: ``dra_node`` with the backends of ``node_backends`` configured."""
    dra_node.write_backends(node_backends(dra_node.emu, dra_node.name))
    return dra_node


@pytest.fixture
def kubelet(dra_kubelet: FakeDRAKubelet) -> FakeDRAKubelet:
    """In this folder the kubelet is the DRA one (``dra_kubelet``)."""
    return dra_kubelet


@pytest.fixture
def k8s_node(k8s_api: client.ApiClient, node_env: DraNode) -> Iterator[str]:
    """A Node object of its own (its name is the pool name), labelled for the test backends.

    Only its object exists (no kubelet behind it): the driver reads its labels and UID, and
    its slices are owned by it, so deleting it at the end garbage-collects them.
    """
    core = client.CoreV1Api(k8s_api)
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=node_env.node, labels={NODE_LABEL: node_env.node})
        )
    )
    yield node_env.node
    core.delete_node(node_env.node)
