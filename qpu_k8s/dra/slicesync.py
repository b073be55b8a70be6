"""The node's ResourceSlices kept equal to its devices.

A reconcile runs whenever something changed (config, health, calibration) and every
``resync_seconds``; a watch on the pool's slices starts one at once when someone else
deletes or edits them (a restarting kubelet wipes its node's slices). A failed write (the
apiserver down or refusing) is retried with backoff.

Which devices, and how (one per lane, or one per QPU with capacity):
:func:`qpu_k8s.resourceslices.policy.lane_devices`. A backend
not probed yet since a restart is published as it was last known (:mod:`.calibration`),
so a restart does not empty the node's slice while the first probes run.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from qpu_k8s.core.model import AccessMode
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.resourceslices.build import Device
from qpu_k8s.resourceslices.policy import DeviceModel, UnhealthyMode, lane_devices
from qpu_k8s.resourceslices.publish import PublishResult, SlicePublisher

from . import metrics
from .binding import acquires_before_bind
from .calibration import Calibration

log = logging.getLogger(__name__)


class NodeSlices:
    """Publishes the node pool's devices through ``publisher`` (see the module docstring)."""

    def __init__(
        self,
        registry: BackendRegistry,
        calibration: Calibration,
        publisher: SlicePublisher,
        *,
        mode: UnhealthyMode,
        resync_seconds: float,
        model: DeviceModel = DeviceModel.LANES,
        binding_default: bool | None = None,
    ) -> None:
        """``binding_default``: the driver's acquire-before-bind default for backends that do
        not choose; None when no claim watcher runs (no device may then wait for one)."""
        self.registry = registry
        self.calibration = calibration
        self.publisher = publisher
        self.mode = mode
        self.model = model
        self.resync_seconds = resync_seconds
        self.binding_default = binding_default
        self.last_publish: PublishResult | None = None
        self._dirty = threading.Event()
        # Reconciles started and finished, for settle().
        self._rounds = threading.Condition()
        self._started = self._finished = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def devices(self) -> list[Device]:
        """The devices this node publishes now."""
        out: list[Device] = []
        for name, state in sorted(self.registry.snapshot().items()):
            if state.backend.spec.access is AccessMode.SHARED:
                continue  # the operator publishes it cluster-wide
            usable = state.usable
            why = "error" if state.error else state.health.status
            reason = "" if state.error else state.health.reason
            if state.health.status == "unknown" and state.error is None:
                last = self.calibration.last_health(state)  # not probed since a restart
                if last is not None:
                    (usable, why), reason = last, ""
            out += lane_devices(
                state.backend,
                self.calibration.attributes(state),
                usable=usable,
                why=why,
                driver=self.publisher.driver,
                mode=self.mode,
                model=self.model,
                acquire_before_bind=self.binding_default is not None
                and acquires_before_bind(state.backend, self.binding_default),
                reason=reason,
            )
            log.debug("devices of backend", extra={"backend": name, "usable": usable})
        return out

    def publish(self) -> PublishResult:
        devices = self.devices()
        result = self.publisher.publish(devices)
        metrics.SLICE_PUBLISHES.labels("written" if result.changed else "unchanged").inc()
        metrics.PUBLISHED_DEVICES.set(len(devices))
        metrics.POOL_GENERATION.set(result.generation)
        self.last_publish = result
        return result

    def changed(self) -> None:
        """Reconcile soon (something the devices depend on changed)."""
        self._dirty.set()

    def settle(self, timeout: float) -> bool:
        """Wait until a reconcile that started after this call has ended (what a caller
        just learnt, e.g. a failed backend's probe, is then in the slice, or the write
        failed); False at the deadline."""
        with self._rounds:
            target = self._started + 1
            self._dirty.set()
            return self._rounds.wait_for(lambda: self._finished >= target, timeout)

    def start(self) -> None:
        for target, name in ((self._loop, "dra-slices"), (self._watch, "dra-slice-watch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.publisher.stop_watch()
        for t in self._threads:
            t.join(timeout=2)
        self._threads = []

    def _loop(self) -> None:
        backoff = 0.5
        self._dirty.set()
        while not self._stop.is_set():
            self._dirty.wait(self.resync_seconds)
            if self._stop.is_set():
                return
            self._dirty.clear()
            with self._rounds:
                self._started += 1
                round_ = self._started
            try:
                self.publish()
                backoff = 0.5
            except Exception as err:  # apiserver down or refusing: retry with backoff
                metrics.SLICE_PUBLISHES.labels("error").inc()
                log.warning("slice publish failed", extra={"error": str(err)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self._dirty.set()
            finally:
                with self._rounds:
                    self._finished = round_
                    self._rounds.notify_all()

    def _watch(self) -> None:
        publisher = self.publisher

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            gen = ((obj.get("spec") or {}).get("pool") or {}).get("generation")
            if kind == "DELETED" or (kind == "MODIFIED" and gen != publisher.generation):
                self._dirty.set()

        publisher.watch(on_event, self._stop, timeout_seconds=10)
