"""The node agents' view of their QuantumBackends: config reload, clients and live health.

Both node agents (device plugin, DRA driver) need the same thing: the backends this node may
use, read from the operator's ConfigMap (followed through the apiserver where the agent
can reach it, :mod:`.configfeed`, else the mounted file; reloaded on change without a
restart), a QRMI client per backend with its credentials, and a health probe per backend on
its own interval under a deadline. Subscribers are called on every change so the device
plugin can push ListAndWatch and the DRA driver can republish its slices at once.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client import Gauge

from qpu_k8s.core import memory
from qpu_k8s.core.credentials import CredentialSource, resolve_credentials
from qpu_k8s.core.errors import CredentialsError
from qpu_k8s.core.metrics import PREFIX
from qpu_k8s.core.model import (
    AccessMode,
    BackendConfig,
    InvalidBackendError,
    QuantumBackend,
    load_backend_config,
    parse_backend_config_bytes,
)
from qpu_k8s.core.qrmi_client import ClientFactory, Health, QuantumResourceClient
from qpu_k8s.core.vendors import profile
from qpu_k8s.node.configfeed import ConfigFeed

log = logging.getLogger(__name__)

BACKEND_HEALTHY = Gauge(
    PREFIX + "backend_healthy", "1 if the backend's last health probe succeeded.", ["backend"]
)
CONFIG_ERRORS = Gauge(
    PREFIX + "config_invalid", "1 while the backend config file on disk is invalid (old one kept)."
)
CONFIG_FROM_APISERVER = Gauge(
    PREFIX + "config_from_apiserver",
    "1 while the backends in use come from the apiserver's copy of the operator's ConfigMap; "
    "0 while from the mounted file, which the kubelet refreshes about once a minute (no "
    "apiserver answer yet, or no --config-map).",
)

NOT_PROBED = Health(False, "unknown", "not probed yet")
# Seconds between two heap trims after probes (see qpu_k8s.core.memory).
TRIM_EVERY = 30.0


def node_may_use(
    backend: QuantumBackend, node_labels: Mapping[str, str], include_shared: bool = True
) -> bool:
    """Node-bound backends only where every selector label matches; shared ones everywhere."""
    selector_ok = all(node_labels.get(k) == v for k, v in backend.spec.node_selector.items())
    if backend.spec.access is AccessMode.NODE_BOUND:
        return selector_ok
    return include_shared and selector_ok


@dataclass(frozen=True)
class BackendState:
    """One backend as the agent currently knows it."""

    backend: QuantumBackend
    client: QuantumResourceClient | None
    health: Health = NOT_PROBED
    # Why this backend cannot be used at all (missing Secret...): reported, never retried hot.
    error: str | None = None
    generation: int = 0

    @property
    def usable(self) -> bool:
        return self.client is not None and self.error is None and self.health.healthy


@dataclass(order=True)
class _Due:
    at: float
    name: str = field(compare=False)
    generation: int = field(compare=False)


class BackendRegistry:
    """Backends of this node, their clients and health; thread-safe; notifies on change."""

    def __init__(
        self,
        config_path: Path,
        credentials: CredentialSource | None,
        client_factory: ClientFactory,
        *,
        node_labels: Mapping[str, str] | None = None,
        include_shared: bool = True,
        reload_interval: float = 2.0,
        probe_workers: int = 8,
        feed: ConfigFeed | None = None,
    ) -> None:
        """``feed``: the ConfigMap through the apiserver; ``config_path`` is read only until
        its first listing (see :mod:`.configfeed`)."""
        self.config_path = config_path
        self.feed = feed
        if feed is not None:
            feed.on_change = self.poke
        self.credentials = credentials
        self.node_labels = dict(node_labels or {})
        self.include_shared = include_shared
        self.client_factory = client_factory
        self.reload_interval = reload_interval
        self._lock = threading.RLock()
        self._states: dict[str, BackendState] = {}
        self._creds: dict[str, dict[str, str]] = {}
        self._subscribers: list[Callable[[], None]] = []
        self._stamp: object = None
        self._reloading = threading.Lock()
        self._poked = threading.Event()
        self._loaded: list[QuantumBackend] | None = None
        self._queue: list[_Due] = []
        # Each backend's one scheduled probe: older heap entries for it are skipped.
        self._next: dict[str, float] = {}
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(probe_workers, thread_name_prefix="probe")
        self._threads: list[threading.Thread] = []
        self._gen = 0
        self.config_error: str | None = None

    # -- public API -----------------------------------------------------------------------
    def subscribe(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (on a registry thread) after any backend or health change."""
        self._subscribers.append(callback)

    def snapshot(self) -> dict[str, BackendState]:
        with self._lock:
            return dict(self._states)

    def get(self, name: str) -> BackendState | None:
        with self._lock:
            return self._states.get(name)

    def credentials_for(self, name: str) -> dict[str, str]:
        """The resolved credentials of a backend (for the env contract); never logged."""
        with self._lock:
            return dict(self._creds.get(name, {}))

    def start(self) -> None:
        if self.feed is not None:
            self.feed.start()
        self.reload()
        for target, name in ((self._probe_loop, "probe-scheduler"), (self._watch_loop, "config")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self.feed is not None:
            self.feed.stop()
        with self._wake:
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poke(self) -> None:
        """Reload soon, on the config thread (the feed saw the ConfigMap change)."""
        self._poked.set()

    def reload(self) -> bool:
        """Re-read the config (and Secrets) now; returns True when anything changed."""
        with self._reloading:  # the config thread, a label change, a test: one at a time
            return self._reload()

    def _read_config(self) -> tuple[object, Callable[[], BackendConfig | None]]:
        """A stamp of the config's current version, and how to load that version."""
        feed = self.feed
        seen = feed.read() if feed is not None else None
        CONFIG_FROM_APISERVER.set(0 if seen is None else 1)
        if feed is not None and seen is not None:
            count, raw = seen
            source = feed.source

            def from_apiserver() -> BackendConfig | None:
                return None if raw is None else parse_backend_config_bytes(raw, source)

            return ("api", count), from_apiserver
        try:
            st = os.stat(self.config_path)
        except FileNotFoundError:
            return None, lambda: None
        path = self.config_path
        return (st.st_ino, st.st_mtime_ns, st.st_size), lambda: load_backend_config(path)

    def _reload(self) -> bool:
        stamp, load = self._read_config()
        if stamp != self._stamp or self._loaded is None:
            try:
                cfg = load()
            except (InvalidBackendError, OSError) as err:
                if self.config_error != str(err):
                    log.error(
                        "backend config invalid, keeping the previous one",
                        extra={"error": str(err)},
                    )
                self.config_error = str(err)
                CONFIG_ERRORS.set(1)
                self._stamp = stamp
                return False
            self.config_error = None
            CONFIG_ERRORS.set(0)
            self._stamp = stamp
            self._loaded = list(cfg.backends) if cfg else []
        wanted = {
            b.name: b
            for b in self._loaded
            if node_may_use(b, self.node_labels, self.include_shared)
        }
        changed = False
        with self._lock:
            for name in list(self._states):
                if name not in wanted:
                    del self._states[name]
                    self._creds.pop(name, None)
                    self._next.pop(name, None)
                    with contextlib.suppress(KeyError):
                        BACKEND_HEALTHY.remove(name)
                    changed = True
                    log.info("backend removed", extra={"backend": name})
            for name, backend in wanted.items():
                creds, error = self._resolve(backend)
                old = self._states.get(name)
                if (
                    old
                    and old.backend == backend
                    and self._creds.get(name) == creds
                    and old.error == error
                ):
                    continue
                self._gen += 1
                client = self.client_factory(backend, creds) if error is None else None
                self._states[name] = BackendState(backend, client, NOT_PROBED, error, self._gen)
                self._creds[name] = creds
                changed = True
                log.info(
                    "backend configured" if old is None else "backend updated",
                    extra={"backend": name, "error": error or ""},
                )
                if (note := profile(backend.spec.type).deprecated) and old is None:
                    log.warning(note, extra={"backend": name})
                if error is None:
                    self._schedule(name, 0.0, self._gen)
            if changed:
                self._wake.notify_all()
        if changed:
            self._notify()
        return changed

    def reprobe(self, name: str) -> None:
        """Probe a backend soon, off the caller's thread (after a failed acquire, so health
        and what is advertised catch up with what the vendor just said)."""
        with self._wake:
            state = self._states.get(name)
            if state is None or state.client is None:
                return
            self._schedule(name, 0.0, state.generation)
            self._wake.notify_all()

    def probe_now(self, name: str) -> Health:
        """Probe one backend now, on the caller's thread, and return its health (how tests and
        benchmarks drive a probe; the agents themselves use :meth:`reprobe`)."""
        state = self.get(name)
        if state is None or state.client is None:
            raise KeyError(name)
        return self._probe(name, state.generation)

    # -- internals ------------------------------------------------------------------------
    def _resolve(self, backend: QuantumBackend) -> tuple[dict[str, str], str | None]:
        try:
            return resolve_credentials(backend, self.credentials), None
        except CredentialsError as err:
            return {}, str(err)

    def _notify(self) -> None:
        for cb in list(self._subscribers):
            try:
                cb()
            except Exception:
                log.exception("subscriber failed")

    def _probe(self, name: str, generation: int) -> Health:
        with self._lock:
            state = self._states.get(name)
        if state is None or state.client is None or state.generation != generation:
            return NOT_PROBED
        health = state.client.health()
        # A round of probes creates and drops vendor objects (when the backends outnumber
        # those kept): give what they freed back now and then.
        memory.trim(at_most_every=TRIM_EVERY)
        changed = False
        with self._lock:
            cur = self._states.get(name)
            if cur is not None and cur.generation == generation:
                if (cur.health.healthy, cur.health.status, cur.health.reason) != (
                    health.healthy,
                    health.status,
                    health.reason,
                ):
                    changed = True
                self._states[name] = replace(cur, health=health)
                BACKEND_HEALTHY.labels(name).set(1 if health.healthy else 0)
        if changed:
            log.info(
                "backend health changed",
                extra={
                    "backend": name,
                    "healthy": health.healthy,
                    "status": health.status,
                    "reason": health.reason,
                },
            )
            self._notify()
        return health

    def _schedule(self, name: str, at: float, generation: int) -> None:
        """Make ``at`` the backend's next probe (caller holds the lock)."""
        self._next[name] = at
        heapq.heappush(self._queue, _Due(at, name, generation))

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                now = time.monotonic()
                if not self._queue or self._queue[0].at > now:
                    timeout = (self._queue[0].at - now) if self._queue else None
                    self._wake.wait(timeout)
                    continue
                due = heapq.heappop(self._queue)
                if self._next.get(due.name) != due.at:
                    continue  # superseded by a reprobe or a newer generation
                state = self._states.get(due.name)
                if state is None or state.generation != due.generation:
                    continue
                interval = state.backend.spec.probe_interval_seconds
                self._schedule(due.name, now + interval, due.generation)
            self._pool.submit(self._probe, due.name, due.generation)

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            self._poked.wait(self.reload_interval)
            self._poked.clear()
            if self._stop.is_set():
                return
            try:
                self.reload()
            except Exception:
                log.exception("config reload failed")
