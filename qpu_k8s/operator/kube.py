"""The operator's own API calls (status, Secrets, ConfigMap, Events, claims), off the event loop.

Kopf watches and patches through its own client; what the operator writes outside a handler
(probe results, the node agents' ConfigMap, shared claims) goes through the official
``kubernetes`` client here. Every call has a request timeout, so an apiserver that stops
answering turns into a retry, never a stuck reconcile, and runs in a small dedicated thread
pool so 1000 backends cannot starve the event loop's default executor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import as_object, load_configuration
from qpu_k8s.core.names import API_GROUP, API_VERSION, BUDGET_PLURAL, PLURAL, USAGE_PLURAL

T = TypeVar("T")
MERGE = "application/merge-patch+json"
RESOURCE_GROUP = "resource.k8s.io"
RESOURCE_VERSION = "v1"
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"


class ApiStatusError(Exception):
    """An API call answered with an HTTP error status (``status`` 0: no answer at all)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the apiserver (shared by kopf's login and our client)."""

    configuration: kubernetes.client.Configuration

    @classmethod
    def load(cls, kubeconfig: Path | None) -> Connection:
        """``kubeconfig`` if given, else in-cluster, else the default kubeconfig."""
        return cls(load_configuration(kubeconfig))


def _json(resp: Any) -> Any:
    data = resp.data if hasattr(resp, "data") else resp
    return json.loads(data) if data else None


def settled(out: T) -> T:
    """``out``, with the body of a raw (``_preload_content=False``) answer read here, in the
    pool's thread: reading it to the end gives the connection back to the pool. Dropped
    unread on the event loop, the answer closed its TLS connection there (2.7 ms each,
    measured) and the next call opened a new one."""
    if isinstance(out, urllib3.BaseHTTPResponse):
        out.data  # noqa: B018 (read for its side effect; cached for the caller)
    return out


class Kube:
    """Blocking API calls, each wrapped by :meth:`call` for use from coroutines."""

    def __init__(self, conn: Connection, *, timeout: float = 10.0, workers: int = 8) -> None:
        cfg = conn.configuration
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 4, workers)
        self.api = kubernetes.client.ApiClient(cfg)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kube")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()  # type: ignore[no-untyped-call]

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the pool; API and transport errors become ApiStatusError."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return settled(fn(*args, _request_timeout=self.timeout, **kwargs))
            except ApiException as err:
                raise ApiStatusError(err.status or 0, f"HTTP {err.status} {err.reason}") from None
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise ApiStatusError(0, f"apiserver not reachable: {type(err).__name__}") from None

        return await loop.run_in_executor(self._pool, run)

    # -- QuantumBackends ----------------------------------------------------------------
    async def list_backends(self, label_selector: str = "") -> list[dict[str, Any]]:
        out = as_object(
            await self.call(
                self.custom.list_cluster_custom_object,
                API_GROUP,
                API_VERSION,
                PLURAL,
                label_selector=label_selector,
            )
        )
        return list(out.get("items", []))

    async def patch_backend_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self.call(
            self.custom.patch_cluster_custom_object_status,
            API_GROUP,
            API_VERSION,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
            _preload_content=False,  # the answer is not needed: skip decoding it
        )

    # -- budgets -------------------------------------------------------------------------
    async def list_usage(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """QuantumUsage records in ``namespace`` (the operator's) matching the selector."""
        out = as_object(
            await self.call(
                self.custom.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                USAGE_PLURAL,
                label_selector=label_selector,
            )
        )
        return list(out.get("items", []))

    async def patch_budget_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        await self.call(
            self.custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            BUDGET_PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
            _preload_content=False,
        )

    # -- Kueue ---------------------------------------------------------------------------
    async def apply_kueue_status(
        self, plural: str, namespace: str, name: str, body: Mapping[str, Any], manager: str
    ) -> None:
        """Server-side apply of a Kueue object's status (only the fields in ``body``)."""
        kwargs: dict[str, Any] = {
            "field_manager": manager,
            "force": True,
            "_content_type": "application/apply-patch+yaml",
            "_preload_content": False,
        }
        if namespace:
            await self.call(
                self.custom.patch_namespaced_custom_object_status,
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                plural,
                name,
                dict(body),
                **kwargs,
            )
        else:
            await self.call(
                self.custom.patch_cluster_custom_object_status,
                KUEUE_GROUP,
                KUEUE_VERSION,
                plural,
                name,
                dict(body),
                **kwargs,
            )

    # -- core objects -------------------------------------------------------------------
    async def secret_data(self, namespace: str, name: str) -> Mapping[str, str] | None:
        resp = await self.call(
            self.core.read_namespaced_secret, name, namespace, _preload_content=False
        )
        body = _json(resp) or {}
        data = body.get("data")
        return data if isinstance(data, dict) else None

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = await self.call(
                self.core.read_namespaced_config_map, name, namespace, _preload_content=False
            )
        except ApiStatusError as err:
            if err.status == 404:
                return None
            raise
        out: dict[str, Any] = _json(resp)
        return out

    async def write_config_map(self, body: dict[str, Any], exists: bool) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if exists:
            await self.call(
                self.core.replace_namespaced_config_map, name, ns, body, _preload_content=False
            )
        else:
            await self.call(
                self.core.create_namespaced_config_map, ns, body, _preload_content=False
            )

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        await self.call(self.core.create_namespaced_event, namespace, body, _preload_content=False)

    async def list_namespaces(self) -> list[dict[str, Any]]:
        resp = await self.call(self.core.list_namespace, _preload_content=False)
        return list((_json(resp) or {}).get("items", []))

    # -- ResourceClaims (resource.k8s.io/v1: built in from 1.34, CRDs on the test cluster) --
    async def dra_available(self) -> bool:
        """True when the apiserver serves resource.k8s.io/v1 resourceclaims."""
        try:
            resp = await self.call(self.custom.get_api_resources, RESOURCE_GROUP, RESOURCE_VERSION)
        except ApiStatusError as err:
            if err.status == 404:
                return False
            raise
        names = {r.name for r in (getattr(resp, "resources", None) or [])}
        return "resourceclaims" in names

    async def list_claims(
        self, label_selector: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        out: object
        if namespace is None:
            out = await self.call(
                self.custom.list_cluster_custom_object,
                RESOURCE_GROUP,
                RESOURCE_VERSION,
                "resourceclaims",
                label_selector=label_selector,
            )
        else:
            out = await self.call(
                self.custom.list_namespaced_custom_object,
                RESOURCE_GROUP,
                RESOURCE_VERSION,
                namespace,
                "resourceclaims",
                label_selector=label_selector,
            )
        return list(as_object(out).get("items", []))

    async def create_claim(self, body: dict[str, Any]) -> None:
        await self.call(
            self.custom.create_namespaced_custom_object,
            RESOURCE_GROUP,
            RESOURCE_VERSION,
            body["metadata"]["namespace"],
            "resourceclaims",
            body,
        )

    async def delete_claim(self, namespace: str, name: str) -> None:
        try:
            await self.call(
                self.custom.delete_namespaced_custom_object,
                RESOURCE_GROUP,
                RESOURCE_VERSION,
                namespace,
                "resourceclaims",
                name,
            )
        except ApiStatusError as err:
            if err.status != 404:
                raise
