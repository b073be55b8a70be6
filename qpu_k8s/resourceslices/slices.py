"""ResourceSlices for one DRA pool: build them, and keep the apiserver in step with them.

Used by the DRA node driver (pool = node name, ``nodeName`` set) and by the operator for
shared backends (``allNodes`` or a ``nodeSelector``). Rules kept here, so both follow them:

* at most 128 devices a slice; every slice of the pool carries ``resourceSliceCount``;
* ``pool.generation`` goes up on every write, so a consumer that sees two generations
  uses the newest; it starts above any generation found in the cluster, so a restarted
  publisher never goes backwards;
* slices are found by label (``LABEL_POOL``), not by field selector: field selectors on
  ``spec.nodeName``/``spec.driver`` exist for the built-in type but not for CRDs (1.20 test
  apiserver), and labels work on both;
* :meth:`SlicePublisher.publish` is a reconcile: it lists the pool's slices, and writes only
  if their content differs from what is wanted (so a slice the kubelet wiped on restart comes
  back on the next call, and an unchanged pool costs one LIST).

API versions: ``resource.k8s.io/v1`` (1.34+) is the native shape. ``v1beta1`` (1.32/1.33)
differs for slices only in that each device nests its fields under ``basic``;
:func:`to_v1beta1` renders that.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.resourceslices.attributes import check_attributes, to_api

log = logging.getLogger(__name__)

GROUP = "resource.k8s.io"
PLURAL = "resourceslices"
MAX_DEVICES_PER_SLICE = 128
LABEL_POOL = "qpu.quantum.example.com/pool"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "qpu-k8s"
TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True)
class DeviceTaint:
    """A DRA device taint (``NoSchedule``: no new allocations; ``NoExecute``: also evict)."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __post_init__(self) -> None:
        if self.effect not in TAINT_EFFECTS:
            raise ValueError(f"taint effect {self.effect!r}: use one of {sorted(TAINT_EFFECTS)}")

    def to_api(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class Device:
    """One published device: a name unique in its pool (a DNS label), attributes, taints."""

    name: str
    attributes: Mapping[str, AttributeValue]
    taints: tuple[DeviceTaint, ...] = ()

    def to_api(self) -> dict[str, Any]:
        check_attributes(self.attributes)
        out: dict[str, Any] = {"name": self.name, "attributes": to_api(self.attributes)}
        if self.taints:
            out["taints"] = [t.to_api() for t in self.taints]
        return out


@dataclass(frozen=True)
class PoolScope:
    """Where a pool's devices can be used: one node, every node, or nodes with labels."""

    node_name: str | None = None
    all_nodes: bool = False
    node_labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        chosen = sum([self.node_name is not None, self.all_nodes, bool(self.node_labels)])
        if chosen != 1:
            raise ValueError("PoolScope: set exactly one of node_name, all_nodes, node_labels")

    @classmethod
    def node(cls, name: str) -> PoolScope:
        return cls(node_name=name)

    @classmethod
    def cluster(cls) -> PoolScope:
        return cls(all_nodes=True)

    @classmethod
    def selector(cls, labels: Mapping[str, str]) -> PoolScope:
        return cls(node_labels=dict(labels))

    def spec_fields(self) -> dict[str, Any]:
        if self.node_name is not None:
            return {"nodeName": self.node_name}
        if self.all_nodes:
            return {"allNodes": True}
        exprs = [
            {"key": k, "operator": "In", "values": [v]} for k, v in sorted(self.node_labels.items())
        ]
        return {"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}


def pool_label(driver: str, pool: str) -> str:
    """Label value naming one (driver, pool): a hash, since pool names may exceed 63 chars."""
    return hashlib.sha256(f"{driver}/{pool}".encode()).hexdigest()[:16]


def slice_name(driver: str, pool: str, index: int) -> str:
    """Deterministic object name of the ``index``-th slice of a pool (a DNS subdomain)."""
    readable = _NOT_DNS.sub("-", pool.lower()).strip(".-")[:180] or "pool"
    return f"{readable}-{pool_label(driver, pool)[:8]}-{index}"


def build_slices(
    driver: str,
    pool: str,
    scope: PoolScope,
    devices: Sequence[Device],
    generation: int,
    *,
    owner_references: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The ``resource.k8s.io/v1`` ResourceSlice objects for a pool (none when no devices)."""
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"pool {pool!r}: device name(s) {dupes} appear twice")
    ordered = sorted(devices, key=lambda d: d.name)
    chunks = [
        ordered[i : i + MAX_DEVICES_PER_SLICE]
        for i in range(0, len(ordered), MAX_DEVICES_PER_SLICE)
    ]
    meta_labels = {**(labels or {}), LABEL_POOL: pool_label(driver, pool)}
    meta_labels[LABEL_MANAGED_BY] = MANAGED_BY
    out = []
    for index, chunk in enumerate(chunks):
        meta: dict[str, Any] = {"name": slice_name(driver, pool, index), "labels": meta_labels}
        if owner_references:
            meta["ownerReferences"] = [dict(o) for o in owner_references]
        out.append(
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "ResourceSlice",
                "metadata": meta,
                "spec": {
                    "driver": driver,
                    "pool": {
                        "name": pool,
                        "generation": generation,
                        "resourceSliceCount": len(chunks),
                    },
                    **scope.spec_fields(),
                    "devices": [d.to_api() for d in chunk],
                },
            }
        )
    return out


def to_v1beta1(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Render a v1 ResourceSlice as ``resource.k8s.io/v1beta1`` (device fields under ``basic``)."""
    spec = dict(obj["spec"])
    spec["devices"] = [
        {"name": d["name"], "basic": {k: v for k, v in d.items() if k != "name"}}
        for d in spec.get("devices", [])
    ]
    return {**obj, "apiVersion": f"{GROUP}/v1beta1", "spec": spec}


def from_v1beta1(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_v1beta1` (for comparing what a 1.32/1.33 apiserver returns)."""
    spec = dict(obj["spec"])
    spec["devices"] = [
        {"name": d["name"], **(d.get("basic") or {})} for d in spec.get("devices") or []
    ]
    return {**obj, "apiVersion": f"{GROUP}/v1", "spec": spec}


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


def shared_pool_name(backend: str) -> str:
    """The pool of a shared (network-attached) backend, published cluster-wide by the operator.

    A node name holds no '/', so this never collides with a node driver's pool; every node's
    DRA driver prepares devices of these pools for the shared backends it is configured with.
    """
    return f"shared/{backend}"
