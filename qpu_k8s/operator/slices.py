"""Cluster-wide ResourceSlices for shared backends: from status to :mod:`qpu_k8s.resourceslices`.

One pool per shared QuantumBackend, named ``shared/<backend>`` (a node name cannot hold a
slash, so it never collides with a node driver's pool), ``allNodes: true`` or the backend's
``nodeSelector``, one device per lane named ``<backend>-lane-<n>`` (``--device-model
lanes``) or one named ``<backend>`` with its lanes as capacity (``capacity``). Attributes
are the ones in status (identity, vendor, technology, qubits and the quality figures of the last
``target()``) plus ``lane``. An unhealthy backend's devices are withdrawn (default; every DRA
version honours it) or kept with a NoSchedule taint (``--unhealthy taint``), as the node
driver does. The slices are owned by the QuantumBackend, so garbage collection removes them
even if the finalizer never ran; the finalizer removes them first anyway.

The objects come from the shared builder (:func:`~qpu_k8s.resourceslices.build.build_slices`,
same names, labels, generation and count rules as the node driver). Writing differs from the
node driver's one-pool publisher on purpose: the operator owns up to thousands of pools,
and a per-pool reconcile starts with a LIST the apiserver answers by scanning every slice
(1000 creates would cost 1000 such scans). So one LIST of all our shared pools fills a
cache (at start, hourly, and after a conflict), and a publish is one create/replace/delete
when the wanted slice differs from the cached one, nothing otherwise. A pool has exactly
one slice: a backend has at most ``MAX_LANES`` (64) devices, a slice holds 128.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.core.model import MAX_LANES, QuantumBackend
from qpu_k8s.core.names import API_GROUP, API_VERSION, KIND
from qpu_k8s.operator.kube import ApiStatusError, Kube, settled
from qpu_k8s.operator.reconcile import is_ready
from qpu_k8s.operator.shared_claims import BACKEND_LABEL
from qpu_k8s.operator.status import BackendStatus
from qpu_k8s.resourceslices.build import (
    GROUP,
    MAX_DEVICES_PER_SLICE,
    PLURAL,
    Device,
    PoolScope,
    build_slices,
    shared_pool_name,
    slice_name,
)
from qpu_k8s.resourceslices.policy import DeviceModel, UnhealthyMode, lane_devices

T = TypeVar("T")
assert MAX_LANES <= MAX_DEVICES_PER_SLICE, "a shared backend's pool must fit in one slice"
POOL_PREFIX = "shared/"
# Cluster-wide slices are not wiped by kubelet restarts (node slices are): the cache of what
# exists is refreshed hourly, so a slice someone deleted by hand comes back within the hour.
SLICE_RESYNC = 3600.0


pool_name = shared_pool_name  # one definition, shared with the DRA driver


def scope_of(backend: QuantumBackend) -> PoolScope:
    sel = backend.spec.node_selector
    return PoolScope.selector(sel) if sel else PoolScope.cluster()


def devices_for(
    backend: QuantumBackend,
    status: BackendStatus,
    driver: str,
    mode: UnhealthyMode = UnhealthyMode.WITHDRAW,
    model: DeviceModel = DeviceModel.LANES,
) -> list[Device]:
    """The backend's devices by the shared policy: usable when Ready, with the attributes
    of its last ``target()`` answer (none yet: not published as usable)."""
    return lane_devices(
        backend,
        status.attributes if status.last_target_time else None,
        usable=is_ready(status),
        why=status.state or "unknown",
        driver=driver,
        mode=mode,
        model=model,
    )


def _clean(node: Any) -> Any:
    """Drop what the apiserver may add or omit (empty values, taint timeAdded)."""
    if isinstance(node, Mapping):
        out = {k: _clean(v) for k, v in node.items() if k != "timeAdded"}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Equal apart from the pool generation (which every write bumps)."""

    def key(obj: Mapping[str, Any]) -> Any:
        spec = dict(obj.get("spec") or {})
        spec["pool"] = {k: v for k, v in (spec.get("pool") or {}).items() if k != "generation"}
        meta = obj.get("metadata") or {}
        owners = [
            {k: o.get(k) for k in ("kind", "name", "uid")}
            for o in meta.get("ownerReferences") or []
        ]
        return _clean(spec), meta.get("labels") or {}, owners

    return bool(key(current) == key(wanted))


class BackendSlices:
    """Publishes the pools of shared backends (async facade over blocking API calls)."""

    def __init__(
        self,
        kube: Kube,
        driver: str,
        *,
        mode: UnhealthyMode = UnhealthyMode.WITHDRAW,
        model: DeviceModel = DeviceModel.LANES,
        resync: float = SLICE_RESYNC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.driver = driver
        self.mode = mode
        self.model = model
        self.resync = resync
        self._clock = clock
        self._cache: dict[str, dict[str, Any]] = {}  # pool name -> its slice
        # Highest generation written per pool, so a withdrawn-then-republished pool keeps
        # counting up instead of restarting at 1.
        self._generations: dict[str, int] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def call() -> T:
            try:
                return settled(fn(*args, _request_timeout=self.kube.timeout, **kwargs))
            except ApiException as err:
                raise ApiStatusError(err.status or 0, f"HTTP {err.status} {err.reason}") from None
            except OSError as err:
                raise ApiStatusError(0, f"apiserver not reachable: {type(err).__name__}") from None

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.kube.timeout * 2):
                return await loop.run_in_executor(self.kube._pool, call)
        except TimeoutError:
            raise ApiStatusError(0, "apiserver did not answer in time") from None

    async def refresh(self) -> None:
        """Reload the cache: one LIST of every slice that belongs to a shared backend."""
        out = as_object(
            await self._run(
                self.kube.custom.list_cluster_custom_object,
                GROUP,
                "v1",
                PLURAL,
                label_selector=BACKEND_LABEL,
            )
        )
        cache: dict[str, dict[str, Any]] = {}
        for item in out.get("items", []):
            spec = item.get("spec") or {}
            pool = str((spec.get("pool") or {}).get("name", ""))
            if spec.get("driver") == self.driver and pool.startswith(POOL_PREFIX):
                cache[pool] = item
        self._cache = cache
        self._loaded_at = self._clock()

    async def _ensure_loaded(self) -> None:
        async with self._lock:
            stale = self._loaded_at is None or self._clock() - self._loaded_at > self.resync
            if stale:
                await self.refresh()

    def _wanted(
        self, backend: QuantumBackend, status: BackendStatus, uid: str, generation: int
    ) -> dict[str, Any] | None:
        owner = (
            [
                {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": KIND,
                    "name": backend.name,
                    "uid": uid,
                    "controller": True,
                }
            ]
            if uid
            else []
        )
        built = build_slices(
            self.driver,
            pool_name(backend.name),
            scope_of(backend),
            devices_for(backend, status, self.driver, self.mode, self.model),
            generation,
            owner_references=owner,
            labels={BACKEND_LABEL: backend.name},
        )
        return built[0] if built else None

    async def publish(self, backend: QuantumBackend, status: BackendStatus, uid: str = "") -> bool:
        """Make the backend's pool match its status; returns True when something was written."""
        await self._ensure_loaded()
        pool = pool_name(backend.name)
        current = self._cache.get(pool)
        seen = int(((current or {}).get("spec") or {}).get("pool", {}).get("generation", 0))
        generation = max(seen, self._generations.get(pool, 0)) + 1
        wanted = self._wanted(backend, status, uid, generation)
        if wanted is None and current is None:
            return False
        if wanted is not None and current is not None and _same(current, wanted):
            return False
        try:
            if wanted is None:
                await self._delete(str(current["metadata"]["name"]))  # type: ignore[index]
                self._cache.pop(pool, None)
            elif current is None:
                made = await self._run(
                    self.kube.custom.create_cluster_custom_object, GROUP, "v1", PLURAL, wanted
                )
                self._cache[pool] = as_object(made)
                self._generations[pool] = generation
            else:
                wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                made = await self._run(
                    self.kube.custom.replace_cluster_custom_object,
                    GROUP,
                    "v1",
                    PLURAL,
                    wanted["metadata"]["name"],
                    wanted,
                )
                self._cache[pool] = as_object(made)
                self._generations[pool] = generation
        except ApiStatusError as err:
            if err.status in (404, 409):
                self._loaded_at = None  # someone else wrote: reload before the next try
            raise
        return True

    async def _delete(self, name: str) -> None:
        try:
            await self._run(
                self.kube.custom.delete_cluster_custom_object, GROUP, "v1", PLURAL, name
            )
        except ApiStatusError as err:
            if err.status != 404:
                raise

    async def remove(self, name: str) -> None:
        """Delete the backend's pool: one DELETE of its deterministic slice name."""
        pool = pool_name(name)
        await self._delete(slice_name(self.driver, pool, 0))
        self._cache.pop(pool, None)
        self._generations.pop(pool, None)


def make_publisher(kube: Kube, cfg: Any) -> BackendSlices:
    return BackendSlices(
        kube,
        cfg.driver,
        mode=UnhealthyMode(cfg.unhealthy),
        model=DeviceModel(getattr(cfg, "device_model", "lanes")),
    )
