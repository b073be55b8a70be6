"""One way for every component to reach the apiserver, with one retry rule.

Retry rule: a request whose connection could not be made is retried (twice), so an
apiserver that restarts costs a moment; a request that was sent and timed out is never
repeated by the client (a create may have happened, and a partitioned apiserver would
multiply the caller's deadline). Each caller passes its own ``_request_timeout`` and
decides itself what to do after a failure (the agents' loops retry with backoff; the
kubelet retries a failed NodePrepareResources).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes import client, config
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
