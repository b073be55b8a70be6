"""Cluster-wide ResourceSlices for shared backends: glue from status to :mod:`qpu_k8s.slices`.

One pool per shared QuantumBackend, named ``shared/<backend>`` (a node name cannot hold a
slash, so it never collides with a node driver's pool), ``allNodes: true`` or the backend's
``nodeSelector``, one device per lane named ``<backend>-lane-<n>``. Attributes are the ones
in status (identity, vendor, technology, qubits and the quality figures of the last
``target()``) plus ``lane``. An unhealthy backend's devices are withdrawn (default; every DRA
version honours it) or kept with a NoSchedule taint (``--unhealthy taint``), as the node
driver does. The slices are owned by the QuantumBackend, so garbage collection removes them
even if the finalizer never ran; the finalizer removes them first anyway.

The builder and the reconciling publisher are the DRA core's; this module only decides
what to publish and when: on every change, and at least every ``resync`` seconds (a slice
someone deleted comes back; hourly by default), not on every probe of an unchanged backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from qpu_k8s.dra.health import UnhealthyMode, unhealthy_taint
from qpu_k8s.model import API_GROUP, API_VERSION, KIND, MAX_LANES, QuantumBackend, device_id
from qpu_k8s.operator.kube import Kube
from qpu_k8s.operator.reconcile import is_ready
from qpu_k8s.operator.secrets import ApiStatusError
from qpu_k8s.operator.shared_claims import BACKEND_LABEL
from qpu_k8s.operator.status import BackendStatus
from qpu_k8s.slices import (
    GROUP,
    MAX_DEVICES_PER_SLICE,
    PLURAL,
    Device,
    PoolScope,
    SlicePublisher,
    slice_name,
)

T = TypeVar("T")
assert MAX_LANES <= MAX_DEVICES_PER_SLICE, "a shared backend's pool must fit in one slice"


def pool_name(backend: str) -> str:
    return f"shared/{backend}"


def scope_of(backend: QuantumBackend) -> PoolScope:
    sel = backend.spec.node_selector
    return PoolScope.selector(sel) if sel else PoolScope.cluster()


def devices_for(
    backend: QuantumBackend,
    status: BackendStatus,
    driver: str,
    mode: UnhealthyMode = UnhealthyMode.WITHDRAW,
) -> list[Device]:
    """One device per lane; none (withdraw) or tainted ones (taint) when not Ready."""
    ready = is_ready(status)
    if not ready and mode is UnhealthyMode.WITHDRAW:
        return []
    taints = () if ready else (unhealthy_taint(driver, status.state or "unknown"),)
    base = {k: v for k, v in status.attributes.items() if k != "lane"}
    return [
        Device(device_id(backend.name, lane), {**base, "lane": lane}, taints)
        for lane in range(backend.spec.lanes)
    ]


class BackendSlices:
    """Publishes the pools of shared backends (async facade over the blocking publisher)."""

    def __init__(
        self,
        kube: Kube,
        driver: str,
        *,
        mode: UnhealthyMode = UnhealthyMode.WITHDRAW,
        resync: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.driver = driver
        self.mode = mode
        self.resync = resync
        self._clock = clock
        self._pubs: dict[str, tuple[str, SlicePublisher]] = {}
        self._last: dict[str, tuple[Any, float]] = {}

    def _publisher(self, backend: QuantumBackend, uid: str) -> SlicePublisher:
        scope = scope_of(backend)
        hit = self._pubs.get(backend.name)
        if hit is not None and hit[0] == uid and hit[1].scope == scope:
            return hit[1]
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
        pub = SlicePublisher(
            self.kube.api,
            self.driver,
            pool_name(backend.name),
            scope,
            owner_references=owner,
            labels={BACKEND_LABEL: backend.name},
        )
        self._pubs[backend.name] = (uid, pub)
        self._last.pop(backend.name, None)
        return pub

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            try:
                return fn(*args)
            except ApiException as err:
                raise ApiStatusError(err.status or 0, f"HTTP {err.status} {err.reason}") from None
            except OSError as err:
                raise ApiStatusError(0, f"apiserver not reachable: {type(err).__name__}") from None

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.kube.timeout * 3):
                return await loop.run_in_executor(self.kube._pool, call)
        except TimeoutError:
            raise ApiStatusError(0, "apiserver did not answer in time") from None

    async def publish(self, backend: QuantumBackend, status: BackendStatus, uid: str = "") -> bool:
        """Reconcile the backend's pool; returns True when slices were written."""
        pub = self._publisher(backend, uid)
        devices = devices_for(backend, status, self.driver, self.mode)
        key = [(d.name, sorted(d.attributes.items()), d.taints) for d in devices]
        last = self._last.get(backend.name)
        now = self._clock()
        if last is not None and last[0] == key and now - last[1] < self.resync:
            return False
        result = await self._run(pub.publish, devices)
        self._last[backend.name] = (key, now)
        return result.changed

    async def remove(self, name: str) -> None:
        """Delete the backend's pool. Its one slice has a deterministic name (at most
        MAX_LANES devices fit in one slice), so this is one DELETE, not a LIST over every
        slice in the cluster: deleting 1000 backends stays linear."""
        self._pubs.pop(name, None)
        self._last.pop(name, None)
        target = slice_name(self.driver, pool_name(name), 0)

        def delete() -> None:
            try:
                self.kube.custom.delete_cluster_custom_object(
                    GROUP, "v1", PLURAL, target, _request_timeout=self.kube.timeout
                )
            except ApiException as err:
                if err.status != 404:
                    raise

        await self._run(delete)


# Cluster-wide slices are not wiped by kubelet restarts (node slices are), so an unchanged
# pool is re-checked hourly: each check is a LIST the apiserver answers by scanning every slice.
SLICE_RESYNC = 3600.0


def make_publisher(kube: Kube, cfg: Any) -> BackendSlices:
    return BackendSlices(kube, cfg.driver, resync=SLICE_RESYNC)
