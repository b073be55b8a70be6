"""This node's labels, for matching node-bound backends' ``nodeSelector``.

Two sources, merged with the flag winning:

* ``--node-labels k=v,...``: static labels (tests, nodes without API access, overrides).
* ``--node-name`` with a kubeconfig (``--kubeconfig``) or in-cluster config: the Node's
  ``metadata.labels`` are read from the apiserver at start and every ``refresh`` seconds
  (needs ``get`` on ``nodes``). If the apiserver is unreachable the last known labels are
  kept; at start the agent goes on with the flag labels alone and logs why.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


class NodeLabelsError(ValueError):
    pass


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` → dict; names the bad item."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NodeLabelsError(
                f"--node-labels: {item!r} is not key=value (e.g. --node-labels "
                "qpu.example.com/lab=zurich,topology.kubernetes.io/zone=a)"
            )
        out[key.strip()] = value.strip()
    return out


def apiserver_configured(kubeconfig: str | None) -> bool:
    return bool(kubeconfig) or "KUBERNETES_SERVICE_HOST" in os.environ


def fetch_node_labels(
    node_name: str, kubeconfig: str | None, timeout: float = 10.0
) -> dict[str, str]:
    """The Node's labels from the apiserver (kubeconfig file, else in-cluster config)."""
    # Only nodes that read their labels from the API pay for importing the client.
    k8s: Any = importlib.import_module("kubernetes")
    if kubeconfig:
        api_client = k8s.config.new_client_from_config(config_file=kubeconfig)
    else:
        cfg = k8s.client.Configuration()
        k8s.config.load_incluster_config(client_configuration=cfg)
        api_client = k8s.client.ApiClient(cfg)
    try:
        node = k8s.client.CoreV1Api(api_client).read_node(node_name, _request_timeout=timeout)
        labels = node.metadata.labels if node.metadata else None
        return {str(k): str(v) for k, v in (labels or {}).items()}
    finally:
        api_client.close()


class NodeLabels:
    """Current labels (flag + apiserver); calls ``on_change`` when a refresh changes them."""

    def __init__(
        self,
        static: Mapping[str, str],
        node_name: str,
        kubeconfig: str | None,
        *,
        refresh: float = 60.0,
        fetch: Callable[[str, str | None], dict[str, str]] = fetch_node_labels,
    ) -> None:
        self.static = dict(static)
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.refresh = refresh
        self._fetch = fetch
        self._remote: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change: Callable[[dict[str, str]], None] | None = None

    @property
    def from_apiserver(self) -> bool:
        return bool(self.node_name) and apiserver_configured(self.kubeconfig)

    def current(self) -> dict[str, str]:
        return {**self._remote, **self.static}

    def load(self) -> dict[str, str]:
        if self.from_apiserver:
            self._update()
        return self.current()

    def _update(self) -> bool:
        try:
            remote = self._fetch(self.node_name, self.kubeconfig)
        except Exception as exc:
            log.warning(
                "cannot read the Node's labels; keeping the last known ones",
                extra={"node": self.node_name, "error": str(exc)[:500]},
            )
            return False
        changed = remote != self._remote
        self._remote = remote
        if changed:
            log.info("node labels", extra={"node": self.node_name, "labels": len(remote)})
        return changed

    def watch(self, on_change: Callable[[dict[str, str]], None]) -> None:
        if not self.from_apiserver:
            return
        self._on_change = on_change
        self._thread = threading.Thread(target=self._loop, name="node-labels", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh):
            if self._update() and self._on_change is not None:
                self._on_change(self.current())
