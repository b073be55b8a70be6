"""Reading ResourceClaims (and per-claim Secrets) for NodePrepareResources.

The kubelet sends only namespace, name and UID; the allocation lives in the claim's status.
:class:`KubeClaims` reads it through the real Kubernetes client at the REST path of
``resource.k8s.io/v1`` (or ``v1beta1``: the parts we read, ``status.allocation.devices``
results and config, have the same shape in both). Any other :class:`ClaimSource` can be
given to the driver (the tests' in-memory and file-backed ones are in ``testsupport.dra``).
"""

from __future__ import annotations

import base64
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import CoreApi, as_object
from qpu_k8s.resourceslices.build import GROUP


class ClaimNotFoundError(LookupError):
    """The claim (or Secret) does not exist, or the apiserver said so."""


class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> dict[str, Any]: ...
    def get_secret(self, namespace: str, name: str) -> dict[str, str]: ...


class KubeClaims:
    """Claims and Secrets from the apiserver (needs get on resourceclaims and secrets)."""

    # 5 s a try, one retry (see agent.API_RETRIES): a claim read answers in milliseconds, and
    # a prepare that cannot reach the apiserver must fail well within the kubelet's deadline.
    def __init__(self, api: client.ApiClient, api_version: str = "v1", timeout: float = 5.0):
        self.custom = client.CustomObjectsApi(api)
        self.core = CoreApi(api)
        self.api_version = api_version
        self.timeout = timeout

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return as_object(
                self.custom.get_namespaced_custom_object(
                    GROUP,
                    self.api_version,
                    namespace,
                    "resourceclaims",
                    name,
                    _request_timeout=self.timeout,
                )
            )
        except ApiException as err:
            if err.status == 404:
                raise ClaimNotFoundError(f"ResourceClaim {namespace}/{name} not found") from None
            raise

    def get_secret(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = self.core.get(
                f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}",
                timeout=self.timeout,
            )
        except ApiException as err:
            if err.status == 404:
                raise ClaimNotFoundError(f"Secret {namespace}/{name} not found") from None
            if err.status == 403:
                raise ClaimNotFoundError(
                    f"Secret {namespace}/{name} cannot be read by the driver (RBAC: get secrets)"
                ) from None
            raise
        data = secret.get("data") or {}
        return {str(k): base64.b64decode(v).decode("utf-8") for k, v in data.items()}
