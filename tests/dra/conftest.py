"""Fixtures for the DRA tests: the fake kubelet, the emulator, and the real cluster's
apiserver (resource.k8s.io/v1 as Kubernetes 1.37 serves it)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dra_builders import NODE_LABEL_KEY, NodeEnv
from kubernetes import client, config

from qpu_k8s.fakekubelet import FakeDRAKubelet


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
@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    from dra_builders import ALICE_KEY, IBM_KEY, PASQAL_TOKEN

    from qpu_k8s.emulator import running_emulator

    with running_emulator(
        api_keys=frozenset({IBM_KEY, ALICE_KEY}),
        pasqal_tokens=frozenset({PASQAL_TOKEN}),
        noise=False,
    ) as emu:
        yield emu


@pytest.fixture
def node_env(emulator: Any) -> Iterator[NodeEnv]:
    from dra_builders import IBM_KEY, PASQAL_TOKEN, node_backends

    root = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))
    env = NodeEnv(root, f"dra-node-{uuid.uuid4().hex[:8]}", emulator)
    for name, key, value in (
        ("ibm-creds", "QRMI_IBM_QCS_IAM_APIKEY", IBM_KEY),
        ("pasqal-creds", "QRMI_PASQAL_CLOUD_AUTH_TOKEN", PASQAL_TOKEN),
    ):
        (root / "creds" / name).mkdir(parents=True)
        (root / "creds" / name / key).write_text(value)
    env.boot_id_file.write_text(str(uuid.uuid4()))
    env.write_backends(node_backends(emulator, env.node))
    yield env
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kubelet(node_env: NodeEnv) -> Iterator[FakeDRAKubelet]:
    with FakeDRAKubelet(node_env.root / "registry") as k:
        yield k


@pytest.fixture
def k8s_node(k8s_api: client.ApiClient, node_env: NodeEnv) -> Iterator[str]:
    """A Node object of its own (its name is the pool name), labelled for the test backends.

    Only its object exists (no kubelet behind it): the driver reads its labels and UID, and
    its slices are owned by it, so deleting it at the end garbage-collects them.
    """
    core = client.CoreV1Api(k8s_api)
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=node_env.node, labels={NODE_LABEL_KEY: node_env.node})
        )
    )
    yield node_env.node
    core.delete_node(node_env.node)
