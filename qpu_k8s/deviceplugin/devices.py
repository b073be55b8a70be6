"""The devices this node advertises: one per lane of each backend the node may use.

The list is derived from the :class:`~qpu_k8s.node.registry.BackendRegistry` (config reload,
credentials, health probes) every time it reports a change; each new list gets a version
number and wakes every ListAndWatch stream, which then sends the full list (the API has no
deltas). A lane is Healthy only while its backend is usable: configured, credentials
complete and the last probe answered online.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qpu_k8s.core.model import split_device_id
from qpu_k8s.deviceplugin import metrics
from qpu_k8s.node.registry import BackendRegistry, BackendState
from qpu_k8s.node.versioned import Versioned

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class Device:
    id: str
    backend: str
    lane: int
    healthy: bool
    lanes: int  # lanes of the backend, for least-loaded preference

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


def devices_of(states: Iterable[BackendState]) -> list[Device]:
    """Every lane of every backend, ordered by backend name then lane."""
    out = []
    for st in sorted(states, key=lambda s: s.backend.name):
        lanes = st.backend.spec.lanes
        for lane, dev in enumerate(st.backend.device_ids()):
            out.append(Device(dev, st.backend.name, lane, st.usable, lanes))
    return out


class DeviceBoard:
    """The current device list, versioned; ListAndWatch streams wait on it for changes."""

    def __init__(self, registry: BackendRegistry) -> None:
        self.registry = registry
        self.devices: Versioned[tuple[Device, ...]] = Versioned(())
        self._by_id: dict[str, Device] = {}
        self._lock = threading.Lock()
        registry.subscribe(self.refresh)

    def refresh(self) -> None:
        """Recompute from the registry; bump the version and wake streams if it changed."""
        devices = tuple(devices_of(self.registry.snapshot().values()))
        with self._lock:
            if not self.devices.set(devices):
                return
            old, self._by_id = self._by_id, {d.id: d for d in devices}
        for dev in devices:
            metrics.DEVICE_HEALTHY.labels(dev.id, dev.backend).set(1 if dev.healthy else 0)
        for dev_id, dev in old.items():
            if dev_id not in self._by_id:
                with contextlib.suppress(KeyError):
                    metrics.DEVICE_HEALTHY.remove(dev_id, dev.backend)
        log.info(
            "device list changed",
            extra={
                "version": self.devices.current()[0],
                "healthy": sum(d.healthy for d in devices),
                "unhealthy": sum(not d.healthy for d in devices),
            },
        )

    def lookup(self, device_id: str) -> Device | None:
        with self._lock:
            return self._by_id.get(device_id)

    # -- GetPreferredAllocation -------------------------------------------------------------
    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """Spread a container's devices over distinct backends, least-loaded first.

        Two lanes of one backend in one container still mean one acquisition, so a
        container asking for n QPUs is best served by n different backends. Among
        backends, prefer the one with the largest free fraction of its lanes (``available``
        holds the free devices), then the most free lanes, then the name; within a backend
        the lowest lane. The free-lane tie-break makes a bigger pool absorb the first pod
        of an idle node instead of whichever backend sorts first by name (with the chart's
        emulator that was the one-lane Pasqal backend, which a Qiskit pod cannot use).
        """
        chosen = list(dict.fromkeys(must_include))
        if len(chosen) >= size:
            return chosen[:size] if size > 0 else chosen
        free: dict[str, list[tuple[int, str]]] = {}
        total: dict[str, int] = {}
        for dev_id in dict.fromkeys(available):
            if dev_id in chosen:
                continue
            known = self.lookup(dev_id)
            if known is not None:
                backend, lane, lanes = known.backend, known.lane, known.lanes
            else:
                try:
                    backend, lane = split_device_id(dev_id)
                except ValueError:
                    backend, lane = f"~{dev_id}", 0
                lanes = 1
            free.setdefault(backend, []).append((lane, dev_id))
            total[backend] = max(total.get(backend, 0), lanes)
        used: dict[str, int] = {}
        for dev_id in chosen:
            dev = self.lookup(dev_id)
            key = dev.backend if dev else dev_id
            used[key] = used.get(key, 0) + 1
        for lanes_free in free.values():
            lanes_free.sort()
        while len(chosen) < size and any(free.values()):
            backend = min(
                (b for b, f in free.items() if f),
                key=lambda b: (used.get(b, 0), -len(free[b]) / max(total[b], 1), -len(free[b]), b),
            )
            chosen.append(free[backend].pop(0)[1])
            used[backend] = used.get(backend, 0) + 1
        return chosen
