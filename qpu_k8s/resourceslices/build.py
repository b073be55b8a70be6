"""ResourceSlice objects for one DRA pool: the rules both publishers follow.

Used by the DRA node driver (pool = node name, ``nodeName`` set) and by the operator for
shared backends (pool ``shared/<backend>``, ``allNodes`` or a ``nodeSelector``):

* at most 128 devices a slice; every slice of the pool carries ``resourceSliceCount``;
* deterministic slice names and a pool label (``LABEL_POOL``, a hash: pool names may
  exceed 63 characters), so a writer finds its slices by label without a field selector;
* ``pool.generation`` is set by the writer (it goes up on every write).

API versions: ``resource.k8s.io/v1`` (1.34+) is the native shape. ``v1beta1`` (1.32/1.33)
differs for slices only in that each device nests its fields under ``basic``;
:func:`to_v1beta1` renders that.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qpu_k8s.core.names import DRIVER_NAME
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.resourceslices.attributes import check_attributes, to_api

GROUP = "resource.k8s.io"
PLURAL = "resourceslices"
MAX_DEVICES_PER_SLICE = 128
LABEL_POOL = f"{DRIVER_NAME}/pool"
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
class SharedCapacity:
    """A consumable capacity of a device many claims may share (KEP-5075): ``value`` in
    all, each allocation taking ``default`` unless its request asks for between 1 and
    ``value`` (integers, published as Quantity strings)."""

    value: int
    default: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.default <= self.value:
            raise ValueError(f"capacity default {self.default} not within 1..{self.value}")

    def to_api(self) -> dict[str, Any]:
        return {
            "value": str(self.value),
            "requestPolicy": {
                "default": str(self.default),
                "validRange": {"min": "1", "max": str(self.value)},
            },
        }


@dataclass(frozen=True)
class Device:
    """One published device: a name unique in its pool (a DNS label), attributes, taints;
    with ``capacity``, one device many claims share (``allowMultipleAllocations``); and the
    binding conditions its pod waits for (acquire before bind)."""

    name: str
    attributes: Mapping[str, AttributeValue]
    taints: tuple[DeviceTaint, ...] = ()
    capacity: Mapping[str, SharedCapacity] = field(default_factory=dict)
    binding_conditions: tuple[str, ...] = ()
    binding_failure_conditions: tuple[str, ...] = ()

    def to_api(self) -> dict[str, Any]:
        check_attributes(self.attributes, len(self.capacity))
        out: dict[str, Any] = {"name": self.name, "attributes": to_api(self.attributes)}
        if self.capacity:
            out["capacity"] = {k: c.to_api() for k, c in sorted(self.capacity.items())}
            out["allowMultipleAllocations"] = True
        if self.taints:
            out["taints"] = [t.to_api() for t in self.taints]
        if self.binding_conditions:
            out["bindingConditions"] = list(self.binding_conditions)
            out["bindingFailureConditions"] = list(self.binding_failure_conditions)
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


def shared_pool_name(backend: str) -> str:
    """The pool of a shared (network-attached) backend, published cluster-wide by the operator.

    A node name holds no '/', so this never collides with a node driver's pool; every node's
    DRA driver prepares devices of these pools for the shared backends it is configured with.
    """
    return f"shared/{backend}"
