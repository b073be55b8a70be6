"""The node config as the apiserver has it: the operator's ConfigMap, listed then watched.

The agents also mount that ConfigMap as a file, but the kubelet refreshes a ConfigMap
volume on its own schedule (its sync period plus its cache: a minute or more on default
settings). For that long a deleted QuantumBackend stayed offered on its nodes, and a claim
allocated one of its devices could not be prepared. So the agents follow the one object
through the apiserver (list and watch with a field selector on its name, which RBAC's
``resourceNames`` can limit to it) and see a change within a moment.

The mounted file is read only until the first listing has arrived (no API access, or an
apiserver away at start): after that the API's copy is the only one used, because the file
can only be as new as it or older, and while the watch is down the last copy seen stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from kubernetes import client

from qpu_k8s.core.kubeclient import CoreApi
from qpu_k8s.core.names import NODE_CONFIG_KEY
from qpu_k8s.node.follow import follow

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
REQUEST_TIMEOUT = 10.0


class ConfigFeed:
    """One ConfigMap's ``key``, kept current by a daemon thread (list, watch, relist)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        *,
        key: str = NODE_CONFIG_KEY,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.core = CoreApi(api)
        self.namespace = namespace
        self.name = name
        self.key = key
        self.on_change = on_change
        self.path = f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps"
        self._selector = f"metadata.name={name}"
        self._lock = threading.Lock()
        # (how many contents seen so far, the key's bytes or None when the ConfigMap or key
        # is absent). A count, not the resourceVersion: a DELETED event may carry the
        # object's last version, and the content did change.
        self._seen: tuple[int, bytes | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        """How errors name it: ``ConfigMap <namespace>/<name>``."""
        return f"ConfigMap {self.namespace}/{self.name}"

    def read(self) -> tuple[int, bytes | None] | None:
        """``(change count, bytes)`` of the last copy seen (bytes None: no such ConfigMap
        or key, an empty config), or None before the first listing."""
        with self._lock:
            return self._seen

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="config-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following (a watch in progress ends with its next event or timeout; the
        thread is a daemon)."""
        self._stop.set()

    def _loop(self) -> None:
        follow(
            self.core,
            self.path,
            {"fieldSelector": self._selector},
            stop=self._stop,
            on_list=lambda items: self._take(items[0] if items else None),
            on_event=lambda kind, obj: self._take(None if kind == "DELETED" else obj),
            on_error=self._warn,
            seconds=WATCH_SECONDS,
            timeout=REQUEST_TIMEOUT,
        )

    def _warn(self, err: Exception) -> None:
        log.warning(
            "node config watch restarting; meanwhile "
            + ("the last copy seen stays in use" if self.read() else "the file is read"),
            extra={"configmap": f"{self.namespace}/{self.name}", "error": str(err)[:300]},
        )

    def _take(self, obj: dict[str, Any] | None) -> None:
        data = (obj or {}).get("data") or {}
        text = data.get(self.key)
        raw = text.encode("utf-8") if isinstance(text, str) else None
        with self._lock:
            if self._seen is not None and self._seen[1] == raw:
                return  # only the metadata changed: nothing to reload
            self._seen = (self._seen[0] + 1 if self._seen else 1, raw)
        if self.on_change is not None:
            self.on_change()
