"""Keeping one pool's ResourceSlices in the apiserver equal to the devices given.

The DRA node driver's writer (the operator writes thousands of shared pools through its own
cached writer, :mod:`qpu_k8s.operator.slices`, over the same builder):

* :meth:`SlicePublisher.publish` is a reconcile: it lists the pool's slices and writes only
  if their content differs from what is wanted, so a slice the kubelet wiped on restart
  comes back on the next call, and an unchanged pool costs one LIST;
* ``pool.generation`` goes up on every write and starts above any generation found in the
  cluster, so a restarted publisher never goes backwards;
* slices are found by label, not by field selector (labels work on every apiserver).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.resourceslices.build import (
    GROUP,
    LABEL_POOL,
    PLURAL,
    Device,
    PoolScope,
    build_slices,
    from_v1beta1,
    pool_label,
    to_v1beta1,
)

log = logging.getLogger(__name__)


def detect_api_version(api: client.ApiClient, timeout: float = 30.0) -> str | None:
    """``"v1"`` or ``"v1beta1"``: the newest ``resource.k8s.io`` version the apiserver serves."""
    groups = client.ApisApi(api).get_api_versions(_request_timeout=timeout).groups or []
    for g in groups:
        if g.name == GROUP:
            served = {v.version for v in g.versions}
            for version in ("v1", "v1beta1"):
                if version in served:
                    return version
    return None


def _comparable(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec without what the server may add or what a write bumps (generation, timeAdded)."""
    out = {k: v for k, v in spec.items() if k != "pool"}
    pool = spec.get("pool") or {}
    out["pool"] = {"name": pool.get("name"), "resourceSliceCount": pool.get("resourceSliceCount")}
    devices = []
    for d in spec.get("devices") or []:
        dev = dict(d)
        if dev.get("taints"):
            dev["taints"] = [
                {k: v for k, v in t.items() if k != "timeAdded" and v not in (None, "")}
                for t in dev["taints"]
            ]
        devices.append({k: v for k, v in dev.items() if v not in (None, [], {})})
    out["devices"] = devices
    return {k: v for k, v in out.items() if v not in (None, [], {})}


@dataclass(frozen=True)
class PublishResult:
    changed: bool
    generation: int
    created: int = 0
    updated: int = 0
    deleted: int = 0


class SlicePublisher:
    """Keeps one pool's ResourceSlices equal to the devices given to :meth:`publish`.

    Thread-safe. Uses ``CustomObjectsApi`` (plain REST paths), which works for the built-in
    type on 1.32+ and for the CRDs of the test apiserver alike. Conflicting writes (another
    writer, a stale resourceVersion) are retried from a fresh LIST.
    """

    def __init__(
        self,
        api: client.ApiClient,
        driver: str,
        pool: str,
        scope: PoolScope,
        *,
        api_version: str = "v1",
        owner_references: Sequence[Mapping[str, Any]] = (),
        labels: Mapping[str, str] | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        if api_version not in ("v1", "v1beta1"):
            raise ValueError(f"api_version {api_version!r}: use v1 or v1beta1")
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.driver = driver
        self.pool = pool
        self.scope = scope
        self.api_version = api_version
        self.owner_references = list(owner_references)
        self.labels = dict(labels or {})
        # Every call has a client-side deadline: an apiserver behind a partition accepts
        # and never answers, and without one the publishing thread would wait forever.
        self.timeout = request_timeout
        self.selector = f"{LABEL_POOL}={pool_label(driver, pool)}"
        self.generation = 0
        self._lock = threading.Lock()
        self._last: list[Device] | None = None
        self._watch: watch.Watch | None = None

    # -- reading ---------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """The pool's slices as the apiserver has them, in v1 shape."""
        resp = as_object(
            self.custom.list_cluster_custom_object(
                GROUP,
                self.api_version,
                PLURAL,
                label_selector=self.selector,
                _request_timeout=self.timeout,
            )
        )
        items = [
            i
            for i in resp.get("items", [])
            if (i.get("spec") or {}).get("driver") == self.driver
            and ((i.get("spec") or {}).get("pool") or {}).get("name") == self.pool
        ]
        return [from_v1beta1(i) if self.api_version == "v1beta1" else i for i in items]

    # -- writing ---------------------------------------------------------------------------
    def publish(self, devices: Sequence[Device] | None = None) -> PublishResult:
        """Reconcile the pool to ``devices`` (or to the last devices given, when None)."""
        with self._lock:
            if devices is not None:
                self._last = list(devices)
            if self._last is None:
                raise ValueError("publish() needs devices the first time")
            for attempt in range(5):
                try:
                    return self._reconcile(self._last)
                except ApiException as err:
                    if err.status not in (409, 404) or attempt == 4:
                        raise
                    log.info(
                        "slice write conflicted, retrying",
                        extra={"pool": self.pool, "status": err.status},
                    )
            raise AssertionError("unreachable")

    def delete_all(self) -> int:
        """Remove every slice of the pool (driver shutting down for good, backend deleted)."""
        with self._lock:
            self._last = []
            n = 0
            for obj in self.list():
                n += self._delete(obj["metadata"]["name"])
            return n

    def _reconcile(self, devices: Sequence[Device]) -> PublishResult:
        existing = {o["metadata"]["name"]: o for o in self.list()}
        probe = build_slices(self.driver, self.pool, self.scope, devices, 0)
        wanted = {o["metadata"]["name"]: o for o in probe}
        gens = {int(o["spec"]["pool"].get("generation") or 0) for o in existing.values()}
        self.generation = max([self.generation, *gens])
        same = (
            existing.keys() == wanted.keys()
            and len(gens) <= 1
            and all(
                _comparable(existing[n]["spec"]) == _comparable(wanted[n]["spec"])
                and self._meta_ok(existing[n])
                for n in wanted
            )
        )
        if same:
            return PublishResult(False, self.generation)
        self.generation += 1
        desired = build_slices(
            self.driver,
            self.pool,
            self.scope,
            devices,
            self.generation,
            owner_references=self.owner_references,
            labels=self.labels,
        )
        created = updated = deleted = 0
        for obj in desired:
            name = obj["metadata"]["name"]
            body = to_v1beta1(obj) if self.api_version == "v1beta1" else obj
            if name in existing:
                body["metadata"]["resourceVersion"] = existing[name]["metadata"]["resourceVersion"]
                self.custom.replace_cluster_custom_object(
                    GROUP, self.api_version, PLURAL, name, body, _request_timeout=self.timeout
                )
                updated += 1
            else:
                self.custom.create_cluster_custom_object(
                    GROUP, self.api_version, PLURAL, body, _request_timeout=self.timeout
                )
                created += 1
        for name in existing.keys() - wanted.keys():
            deleted += self._delete(name)
        log.info(
            "resource slices published",
            extra={
                "pool": self.pool,
                "generation": self.generation,
                "devices": len(devices),
                "slices": len(desired),
                # Not "created": that is a LogRecord attribute, and logging refuses it.
                "slices_created": created,
                "slices_updated": updated,
                "slices_deleted": deleted,
            },
        )
        return PublishResult(True, self.generation, created, updated, deleted)

    def _meta_ok(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels.items())

    def _delete(self, name: str) -> int:
        try:
            self.custom.delete_cluster_custom_object(
                GROUP, self.api_version, PLURAL, name, _request_timeout=self.timeout
            )
        except ApiException as err:
            if err.status == 404:
                return 0
            raise
        return 1

    # -- watching --------------------------------------------------------------------------
    def watch(
        self,
        on_event: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        timeout_seconds: int = 60,
    ) -> None:
        """Call ``on_event(type, obj)`` for every change to the pool's slices until ``stop``.

        Meant for a daemon thread: a DELETED event from the kubelet wiping the node's slices
        should trigger :meth:`publish`. Watch errors are logged and the watch restarted.
        Set ``stop`` and call :meth:`stop_watch` to end it at once.
        """
        while not stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            self._watch = w
            try:
                for ev in w.stream(  # type: ignore[no-untyped-call]
                    self.custom.list_cluster_custom_object,
                    GROUP,
                    self.api_version,
                    PLURAL,
                    label_selector=self.selector,
                    timeout_seconds=timeout_seconds,
                    # The server ends the watch after timeout_seconds; silence past that
                    # means a dead connection.
                    _request_timeout=timeout_seconds + self.timeout,
                ):
                    if stop.is_set():
                        break
                    on_event(str(ev.get("type")), ev.get("object") or {})
            except Exception as err:  # the apiserver went away, a 410 Gone...
                if stop.is_set():
                    break
                log.warning("slice watch restarting", extra={"pool": self.pool, "error": str(err)})
                stop.wait(1.0)
            finally:
                w.stop()  # type: ignore[no-untyped-call]

    def stop_watch(self) -> None:
        """Unblock a running :meth:`watch` (shuts its connection down)."""
        w = self._watch
        if w is not None:
            w.stop()  # type: ignore[no-untyped-call]
