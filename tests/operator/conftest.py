"""Fixtures for the operator's API tier: the real 1.20 apiserver, CRDs, a KopfRunner."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from testsupport import resource_api
from testsupport.operator import install_crd


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
