"""Fixtures for the operator's API tier: the real 1.20 apiserver, CRDs, a KopfRunner."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from qpu_k8s.testing import resource_api


@pytest.fixture(scope="session")
def op_api(k8s_kubeconfig: Path) -> client.ApiClient:
    """Admin client; the QuantumBackend CRD (1.20 rendering) and the resource.k8s.io CRDs."""
    from qpu_k8s.operator import crd

    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(k8s_kubeconfig)
    )
    install_crd(api, crd.crd(cel=False))
    resource_api.install(api)
    return api


def install_crd(api: client.ApiClient, body: dict[str, Any], timeout: float = 30) -> None:
    ext = client.ApiextensionsV1Api(api)
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as err:
        if err.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version},
        }
        ext.replace_custom_resource_definition(name, body)
    end = time.monotonic() + timeout
    while True:
        conds = ext.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return
        if time.monotonic() > end:
            raise TimeoutError(f"CRD {name} not established")
        time.sleep(0.05)  # polling the apiserver's condition, bounded by the deadline


@pytest.fixture
def op_ns(op_api: client.ApiClient) -> Iterator[str]:
    """The operator's namespace for one test (Secrets, node ConfigMap, Events)."""
    name = f"qpu-op-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(op_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
