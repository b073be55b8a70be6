"""The pods of this node as the apiserver sees them: which containers can never run again.

The kubelet's PodResources API says which containers hold devices while their pod is
active, but not when a container has ended for good: a finished Job pod simply drops out
of the list, and a container that exited in a still-running pod stays listed. Waiting for a
grace period after a pod disappears costs session time (for IBM sessions: paid QPU time);
so the device plugin also watches its node's pods and releases at once what a container
that cannot run again held:

* every container of a pod that is Succeeded or Failed, or deleted;
* a container that terminated and will not be restarted: restart policy ``Never``, or
  ``OnFailure`` after exit code 0 (a restarting container keeps its devices and its
  session: ``Always``, or ``OnFailure`` after a failure, never count);
* init containers only with their pod (a new pod sandbox runs them again).

The same view tells when the kubelet has caught up after a restart: once every running
pod that asks for the resource is in its PodResources list, there is no reason to hold
releases back any longer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from qpu_k8s.core.kubeclient import CoreApi
from qpu_k8s.node.follow import follow

log = logging.getLogger(__name__)

# Deleted pods are remembered this long (their containers' sessions must still be released).
FORGET_AFTER = 600.0
PODS = "/api/v1/pods"
WATCH_SECONDS = 300
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    phase: str
    # Containers that ended and cannot run again.
    finished: frozenset[str]
    # Whether any container asks for the watched extended resource.
    wants_resource: bool
    deleted_at: float | None = None

    @property
    def over(self) -> bool:
        return self.deleted_at is not None or self.phase in ("Succeeded", "Failed")


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        cur = cur.get(key) if isinstance(cur, Mapping) else None
    return cur


def pod_view(pod: Mapping[str, Any], resource: str) -> PodView:
    """What matters of one pod object (the apiserver's JSON)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    policy = spec.get("restartPolicy") or "Always"
    finished = set()
    for cs in status.get("containerStatuses") or []:
        terminated = _get(cs, "state", "terminated")
        if not terminated:
            continue
        code = terminated.get("exitCode")
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            finished.add(str(cs.get("name")))
    wants = any(
        resource in ((c.get("resources") or {}).get("limits") or {})
        or resource in ((c.get("resources") or {}).get("requests") or {})
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
    )
    meta = pod.get("metadata") or {}
    return PodView(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        phase=str(status.get("phase") or "Pending"),
        finished=frozenset(finished),
        wants_resource=wants,
    )


class NodePods:
    """Watches the pods bound to one node (list, then watch; relist when the watch ends)."""

    def __init__(
        self,
        api: client.ApiClient,
        node_name: str,
        resource: str,
        on_change: Callable[[], None],
    ) -> None:
        self.core = CoreApi(api)
        self.node_name = node_name
        self.resource = resource
        self.on_change = on_change
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], PodView] = {}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the device plugin asks ------------------------------------------------------
    def finished(self, namespace: str, pod: str, container: str) -> bool:
        """Whether this container has ended and cannot run again (unknown pods: no)."""
        with self._lock:
            view = self._pods.get((namespace, pod))
        return view is not None and (view.over or container in view.finished)

    def running_with_resource(self) -> set[tuple[str, str]] | None:
        """Running pods asking for the resource; None until the first listing arrived."""
        if not self._synced.is_set():
            return None
        with self._lock:
            return {
                (v.namespace, v.name)
                for v in self._pods.values()
                if v.wants_resource and v.phase == "Running" and not v.over
            }

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="node-pods", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following (a watch in progress ends with its next event or timeout; the
        thread is a daemon)."""
        self._stop.set()

    def _loop(self) -> None:
        follow(
            self.core,
            PODS,
            {"fieldSelector": f"spec.nodeName={self.node_name}"},
            stop=self._stop,
            on_list=self._listed,
            on_event=self._changed,
            on_error=lambda err: log.warning(
                "pod watch restarting", extra={"error": str(err)[:300]}
            ),
            seconds=WATCH_SECONDS,
            timeout=REQUEST_TIMEOUT,
        )

    def _listed(self, items: list[dict[str, Any]]) -> None:
        now = time.time()
        listed = {}
        for pod in items:
            view = pod_view(pod, self.resource)
            listed[(view.namespace, view.name)] = view
        with self._lock:
            for key, old in self._pods.items():  # gone while we were not watching: deleted
                if key not in listed:
                    listed[key] = old if old.deleted_at else _deleted(old, now)
            self._pods = {
                k: v
                for k, v in listed.items()
                if v.deleted_at is None or now - v.deleted_at < FORGET_AFTER
            }
        self._synced.set()
        self.on_change()

    def _changed(self, kind: str, obj: dict[str, Any]) -> None:
        view = pod_view(obj, self.resource)
        key = (view.namespace, view.name)
        with self._lock:
            if kind == "DELETED":
                view = _deleted(view, time.time())
            if self._pods.get(key) == view:
                return
            self._pods[key] = view
        self.on_change()


def _deleted(view: PodView, now: float) -> PodView:
    return PodView(view.namespace, view.name, view.phase, view.finished, view.wants_resource, now)
