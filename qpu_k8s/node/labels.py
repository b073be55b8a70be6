"""This node's labels, for matching node-bound backends' ``nodeSelector`` (both agents).

Two sources, merged with the static ones winning:

* static labels (the device plugin's ``--node-labels k=v,...``; tests; nodes without API
  access; overrides);
* the Node's ``metadata.labels`` read from the apiserver at start and every ``refresh``
  seconds (needs ``get`` on ``nodes``), so a label an admin adds or removes moves
  node-bound backends on or off this node without a restart. If the apiserver is
  unreachable the last known labels are kept; at start the agent goes on with the static
  labels alone and logs why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from kubernetes import client

from qpu_k8s.core.kubeclient import CoreApi

log = logging.getLogger(__name__)

# Deadline of one read of the Node.
NODE_READ_TIMEOUT = 10.0


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


def read_node(api: client.ApiClient, name: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The Node's labels and an ownerReference to it (for objects that die with the node)."""
    node = CoreApi(api).get(f"/api/v1/nodes/{quote(name, safe='')}", timeout=NODE_READ_TIMEOUT)
    meta = node.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"Node {name} came back without metadata")
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    owner = {"apiVersion": "v1", "kind": "Node", "name": meta.get("name"), "uid": meta.get("uid")}
    return labels, owner


class NodeLabels:
    """Current labels (static + apiserver); calls ``on_change`` when a refresh changes them."""

    def __init__(
        self,
        static: Mapping[str, str],
        node_name: str,
        fetch: Callable[[str], dict[str, str]] | None,
        *,
        refresh: float = 60.0,
        known: Mapping[str, str] | None = None,
    ) -> None:
        """``known``: the Node's labels as just read by the caller (saves the first read)."""
        self.static = dict(static)
        self.node_name = node_name
        self.refresh = refresh
        self._fetch = fetch if node_name else None
        self._remote: dict[str, str] = dict(known or {})
        self._known = known is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change: Callable[[dict[str, str]], None] | None = None

    @property
    def from_apiserver(self) -> bool:
        return self._fetch is not None

    def current(self) -> dict[str, str]:
        return {**self._remote, **self.static}

    def load(self) -> dict[str, str]:
        if self.from_apiserver and not self._known:
            self._update()
        return self.current()

    def _update(self) -> bool:
        assert self._fetch is not None
        try:
            remote = self._fetch(self.node_name)
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
