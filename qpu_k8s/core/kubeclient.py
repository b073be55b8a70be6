"""One way for every component to reach the apiserver, with one retry rule.

Retry rule: a request whose connection could not be made is retried (twice), so an
apiserver that restarts costs a moment; a request that was sent and timed out is never
repeated by the client (a create may have happened, and a partitioned apiserver would
multiply the caller's deadline). Each caller passes its own ``_request_timeout`` and
decides itself what to do after a failure (the agents' loops retry with backoff; the
kubelet retries a failed NodePrepareResources).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3 import Retry

RETRIES = Retry(total=2, connect=2, read=0, status=0, redirect=0, other=0)


def apiserver_configured(kubeconfig: str | Path | None) -> bool:
    """Whether there is an apiserver to talk to: a kubeconfig, or running in a pod."""
    return bool(kubeconfig) or "KUBERNETES_SERVICE_HOST" in os.environ


def load_configuration(kubeconfig: str | Path | None) -> client.Configuration:
    """``kubeconfig`` if given, else the in-cluster service account, else ``~/.kube/config``."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=cfg
        )
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.retries = RETRIES
    return cfg


def api_client(kubeconfig: str | Path | None, *, pool_size: int | None = None) -> client.ApiClient:
    """An API client (see :func:`load_configuration`); ``pool_size`` for concurrent callers."""
    cfg = load_configuration(kubeconfig)
    if pool_size is not None:
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 4, pool_size)
    return client.ApiClient(cfg)


def as_object(value: object) -> dict[str, Any]:
    """A JSON object returned by ``CustomObjectsApi`` (typed ``object`` by the client)."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object from the apiserver, got {type(value).__name__}")
    return value


class CoreApi:
    """Reads, watches and creates of objects as JSON, by path.

    The node agents read three: their Node, their node's pods, a claim's Secret; they
    create their usage records and Events. The generated ``CoreV1Api`` would do, but its
    module defines every core type and costs about 20 MiB of each agent's memory; these go
    through the same client's connection pool, credentials (refreshed tokens included) and
    retry rule instead. A status outside 2xx raises the client's ``ApiException`` with it,
    as the generated API does.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def get(
        self, path: str, *, query: Mapping[str, str] | None = None, timeout: float
    ) -> dict[str, Any]:
        resp = self._request(path, query, urllib3.Timeout(total=timeout), stream=False)
        return as_object(json.loads(resp.data))

    def create(self, path: str, body: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """POST ``body`` to the collection at ``path`` (any API group); the created object."""
        resp = self._request(
            path, None, urllib3.Timeout(total=timeout), stream=False, method="POST", body=body
        )
        return as_object(json.loads(resp.data))

    def watch(
        self, path: str, *, query: Mapping[str, str], connect_timeout: float, seconds: int
    ) -> Generator[dict[str, Any], None, None]:
        """The events (``{"type": ..., "object": ...}``) of a watch the apiserver ends after
        ``seconds``; closing the iterator closes the connection."""
        timeout = urllib3.Timeout(connect=connect_timeout, read=seconds + connect_timeout)
        query = {**query, "watch": "true", "timeoutSeconds": str(seconds)}
        resp = self._request(path, query, timeout, stream=True)
        try:
            pending = b""
            for chunk in resp.stream(decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield as_object(json.loads(line))
        finally:
            resp.release_conn()

    def _request(
        self,
        path: str,
        query: Mapping[str, str] | None,
        timeout: urllib3.Timeout,
        stream: bool,
        *,
        method: str = "GET",
        body: Mapping[str, Any] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        cfg = self.api.configuration
        headers = {**self.api.default_headers, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for auth in cfg.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        url = cfg.host + path + (f"?{urlencode(query)}" if query else "")
        resp = self.api.rest_client.pool_manager.request(
            method,
            url,
            headers=headers,
            timeout=timeout,
            preload_content=not stream,
            body=json.dumps(body) if body is not None else None,
        )
        if not 200 <= resp.status < 300:
            answer = resp.data if not stream else resp.read()
            resp.release_conn()
            err = ApiException(status=resp.status, reason=resp.reason)
            err.body = answer.decode("utf-8", "replace")
            raise err
        return resp
