"""What each backend's devices look like: attributes from ``target()``, kept fresh, and
remembered across restarts together with the backend's last health.

The device attributes (qubits, calibration quality) come from each backend's ``target()``
answer: fetched when the backend first answers online, again every
``target_refresh_seconds`` (calibrations drift), and at once after a config change. Only
the derived attributes are kept, not the answer (for a 133-qubit IBM device ~0.5 MB of
JSON, ~12 MiB of RSS once parsed).

They are also remembered in the driver's state, with the backend's last probe outcome, so
a restarted driver publishes what it last knew at once instead of withdrawing every device
until the first probe answers (up to a probe timeout against a slow vendor, during which
the scheduler would see a node without QPUs). A probe that says otherwise wins as soon as
it answers; a changed spec forgets what was learnt under the old one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from qpu_k8s.core import memory
from qpu_k8s.core.errors import QpuError
from qpu_k8s.core.model import AccessMode, QuantumBackend
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.node.registry import BackendRegistry, BackendState
from qpu_k8s.resourceslices.attributes import (
    InvalidAttributesError,
    device_attributes,
    target_attributes,
)

from .state import KnownBackend, StateStore

log = logging.getLogger(__name__)


def fingerprint(backend: QuantumBackend) -> str:
    return hashlib.sha256(backend.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Fetched:
    generation: int
    at: float
    attributes: dict[str, AttributeValue]


class Calibration:
    """The node's backends' device attributes and last known health; thread-safe."""

    def __init__(
        self,
        registry: BackendRegistry,
        store: StateStore,
        *,
        refresh_seconds: float,
        on_change: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.on_change = on_change
        self._lock = threading.Lock()
        self._fetched: dict[str, _Fetched] = {}
        self._known: dict[str, KnownBackend] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reads ----------------------------------------------------------------------------------
    def attributes(self, state: BackendState) -> dict[str, AttributeValue] | None:
        """The lane-independent attributes of a backend's devices; None until its
        ``target()`` has answered (now, or before a restart under the same spec)."""
        name = state.backend.name
        with self._lock:
            fetched = self._fetched.get(name)
            known = self._known.get(name)
        if fetched is not None and fetched.generation == state.generation:
            return fetched.attributes
        if known is not None and known.spec == fingerprint(state.backend):
            return known.attributes
        return None

    def last_health(self, state: BackendState) -> tuple[bool, str] | None:
        """The health remembered from before a restart, for a backend not probed yet."""
        with self._lock:
            known = self._known.get(state.backend.name)
        if known is None or known.healthy is None or known.spec != fingerprint(state.backend):
            return None
        return known.healthy, known.status

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> None:
        """What the store remembers (call before the first publish)."""
        with self._lock:
            self._known = self.store.known()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dra-targets", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def wake(self) -> None:
        """Something changed (config, health): fetch what became due, remember health."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("target refresh failed")
            self._wake.wait(min(self.refresh_seconds, 60.0))
            self._wake.clear()

    # -- fetching -------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Fetch target() where due, remember what changed; True when attributes changed."""
        changed = fetched = False
        now = time.monotonic()
        states = self.registry.snapshot()
        for name, state in states.items():
            if state.backend.spec.access is AccessMode.SHARED:
                continue  # published by the operator, not by this node
            self._remember_health(state)
            if state.client is None or state.error or not state.health.healthy:
                continue
            with self._lock:
                cur = self._fetched.get(name)
            due = (
                force
                or cur is None
                or cur.generation != state.generation
                or now - cur.at >= self.refresh_seconds
            )
            if not due:
                continue
            try:
                target = state.client.target()
            except QpuError as err:
                log.warning("target() failed", extra={"backend": name, "error": str(err)})
                continue
            fetched = True
            try:
                attrs = device_attributes(
                    state.backend, 0, probed=target_attributes(state.backend, target)
                )
            except InvalidAttributesError as err:
                log.error("backend not published", extra={"backend": name, "error": str(err)})
                continue
            del target  # only the derived attributes are kept
            attrs.pop("lane", None)
            before = self.attributes(state)
            with self._lock:
                self._fetched[name] = _Fetched(state.generation, now, attrs)
            if attrs != before:
                changed = True
                log.info("device attributes changed", extra={"backend": name})
                self._remember(state, attributes=attrs)
        self._forget_gone(states)
        if fetched:
            memory.trim()  # a parsed calibration is megabytes the heap would keep
        if changed:
            self.on_change()
        return changed

    def _remember_health(self, state: BackendState) -> None:
        if state.health.status == "unknown" and state.error is None:
            return  # not probed yet: keep what was known
        healthy = state.usable
        status = "error" if state.error else state.health.status
        with self._lock:
            known = self._known.get(state.backend.name)
        if known is not None and (known.healthy, known.status) == (healthy, status):
            return
        self._remember(state, healthy=healthy, status=status)

    def _remember(self, state: BackendState, **update: object) -> None:
        name, spec = state.backend.name, fingerprint(state.backend)
        with self._lock:
            known = self._known.get(name)
            if known is None or known.spec != spec:
                known = KnownBackend(backend=name, spec=spec)
            known = known.model_copy(update=update)
            self._known[name] = known
        self.store.remember(known)

    def _forget_gone(self, states: dict[str, BackendState]) -> None:
        with self._lock:
            gone = [n for n in set(self._fetched) | set(self._known) if n not in states]
            for name in gone:
                self._fetched.pop(name, None)
                self._known.pop(name, None)
        for name in gone:
            self.store.forget(name)
