"""The DRA node driver: wires the backend registry, slices, prepare logic and gRPC servers.

Start-up order matters: read the checkpoint and clean what a reboot or crash left
(:meth:`Preparer.recover`), serve the DRA endpoint, and only then create the registration
socket, so the kubelet never reaches a driver that cannot answer. Shutdown reverses it:
the registration socket goes first (the kubelet stops sending work), then the endpoint.
Slices are left in place on shutdown (a restart or rolling update republishes them; the
kubelet removes a node's slices itself when a driver stays unregistered).

Threads: the registry's own (config reload, probes); ``slices`` (publish when anything
changed, and every ``resync_seconds``); ``slice-watch`` (republish at once when someone
else, e.g. a restarting kubelet, deletes or edits our slices); ``targets`` (fetch each
backend's ``target()``/``metadata()`` when it appears and every
``target_refresh_seconds``, so calibration changes reach the quality attributes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from kubernetes import client

from qpu_k8s.core.checkpoint import BOOT_ID_PATH, read_boot_id
from qpu_k8s.core.credentials import DirectoryCredentials
from qpu_k8s.core.errors import QpuError
from qpu_k8s.core.kubeclient import api_client
from qpu_k8s.core.metrics import serve_metrics
from qpu_k8s.core.model import AccessMode, device_id
from qpu_k8s.core.names import DRIVER_NAME
from qpu_k8s.core.qrmi_client import CallTimeouts, ClientFactory, qrmi_client_factory
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.node.grpcserver import UnixServer
from qpu_k8s.node.labels import NodeLabels, read_node
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.proto.dra.v1 import api_pb2_grpc as v1_grpc
from qpu_k8s.proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from qpu_k8s.proto.dra_health.v1 import api_pb2_grpc as h_v1_grpc
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2_grpc as h_v1a1_grpc
from qpu_k8s.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from qpu_k8s.resourceslices.attributes import (
    InvalidAttributesError,
    device_attributes,
    target_attributes,
)
from qpu_k8s.resourceslices.slices import (
    Device,
    DeviceTaint,
    PoolScope,
    PublishResult,
    SlicePublisher,
    detect_api_version,
    shared_pool_name,
)

from . import metrics
from .cdi import CdiWriter
from .claims import ClaimSource, KubeClaims
from .health import (
    DeviceHealth,
    HealthServiceV1,
    HealthServiceV1Alpha1,
    UnhealthyMode,
    health_board,
    status_of,
    unhealthy_taint,
)
from .plugin import DRAHandler, DRAPluginV1, DRAPluginV1Beta1
from .prepare import Preparer
from .registration import RegistrationService, SocketPaths, instance_id, socket_paths
from .state import StateStore

log = logging.getLogger(__name__)


@dataclass
class DraDriverConfig:
    """Everything the driver needs; the CLI fills it from flags and env."""

    node_name: str
    config_path: Path
    plugins_dir: Path = Path("/var/lib/kubelet/plugins")
    registry_dir: Path = Path("/var/lib/kubelet/plugins_registry")
    cdi_dir: Path = Path("/var/run/cdi")
    state_dir: Path = Path("/var/lib/qpu-k8s/dra")
    credentials_dir: Path | None = None
    kubeconfig: Path | None = None
    driver_name: str = DRIVER_NAME
    boot_id_file: Path = BOOT_ID_PATH
    unhealthy: UnhealthyMode = UnhealthyMode.WITHDRAW
    api_version: str = "auto"  # auto | v1 | v1beta1
    resync_seconds: float = 30.0
    target_refresh_seconds: float = 300.0
    probe_timeout: float = 10.0
    # Deadline of an acquire or a release (NodePrepare/NodeUnprepareResources).
    acquire_timeout: float = 30.0
    reload_interval: float = 2.0
    instance: str | None = None
    node_labels: Mapping[str, str] | None = None  # None: read from the Node object
    node_labels_refresh: float = 60.0
    metrics_address: str = ""

    def call_timeouts(self) -> CallTimeouts:
        """Probes fail fast; acquire and release get the longer prepare deadline."""
        return CallTimeouts(
            probe=self.probe_timeout, acquire=self.acquire_timeout, release=self.acquire_timeout
        )


@dataclass
class _Target:
    """What a backend's last ``target()`` answer means for its devices: the attributes
    derived from it, not the answer itself (calibration data of a 133-qubit IBM device is
    ~0.5 MB of JSON, ~12 MiB of RSS once parsed)."""

    generation: int
    fetched_at: float
    probed: dict[str, AttributeValue]
    metadata: dict[str, str] | None


# Deadline of one apiserver request at start-up (API discovery).
API_TIMEOUT = 30.0


class DraDriver:
    """One DRA driver instance on one node."""

    def __init__(
        self,
        cfg: DraDriverConfig,
        *,
        api: client.ApiClient | None = None,
        claims: ClaimSource | None = None,
        client_factory: ClientFactory | None = None,
        publish_slices: bool = True,
    ) -> None:
        self.cfg = cfg
        self._own_api = api is None and (claims is None or publish_slices)
        self.api = api_client(cfg.kubeconfig) if self._own_api else api
        self.claims = claims or KubeClaims(self._require_api())
        self.client_factory = client_factory
        self.publish_slices = publish_slices and self.api is not None
        self.ident = cfg.instance or instance_id()
        self.paths: SocketPaths = socket_paths(
            cfg.driver_name, cfg.plugins_dir, cfg.registry_dir, self.ident
        )
        self.pool = cfg.node_name
        self.health = health_board()
        self.cdi = CdiWriter(cfg.cdi_dir)
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._targets: dict[str, _Target] = {}
        self._targets_lock = threading.Lock()
        self._target_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.registry: BackendRegistry | None = None
        self.node_labels: NodeLabels | None = None
        self._metrics: WSGIServer | None = None
        self.store: StateStore | None = None
        self.preparer: Preparer | None = None
        self.publisher: SlicePublisher | None = None
        self.registration: RegistrationService | None = None
        self._endpoint: UnixServer | None = None
        self._reg_server: UnixServer | None = None
        self.last_publish: PublishResult | None = None
        self.recovered: dict[str, int] = {}
        self._publish_cond = threading.Condition()
        self._publish_count = 0

    def _require_api(self) -> client.ApiClient:
        if self.api is None:
            raise ValueError("the DRA driver needs an apiserver (kubeconfig or in-cluster)")
        return self.api

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        # Metrics first: what recovery finds (acquisitions lost in a crash) must be visible
        # on the first scrape, even of a driver that crash-loops.
        self._metrics = serve_metrics(cfg.metrics_address)
        boot_id = read_boot_id(cfg.boot_id_file)
        self.node_labels, owner = self._node_identity()
        labels = self.node_labels.load()
        api_version = cfg.api_version
        if self.publish_slices and api_version == "auto":
            api_version = detect_api_version(self._require_api(), API_TIMEOUT) or "v1"
        if isinstance(self.claims, KubeClaims) and api_version in ("v1", "v1beta1"):
            self.claims.api_version = api_version
        creds = DirectoryCredentials(cfg.credentials_dir) if cfg.credentials_dir else None
        self.registry = BackendRegistry(
            cfg.config_path,
            creds,
            node_labels=labels,
            # Shared backends are published cluster-wide by the operator, but a claim on one
            # is prepared (acquired) here, on the node that runs the pod.
            include_shared=True,
            client_factory=self.client_factory or qrmi_client_factory(cfg.call_timeouts()),
            reload_interval=cfg.reload_interval,
        )
        self.store = StateStore(cfg.state_dir, boot_id, self.ident)
        self.store.load()
        registry = self.registry
        self.preparer = Preparer(
            driver=cfg.driver_name,
            pool=self.pool,
            registry=registry,
            claims=self.claims,
            cdi=self.cdi,
            store=self.store,
        )
        registry.subscribe(self._on_change)
        registry.start()
        self.node_labels.watch(self._labels_changed)
        self.recovered = self.preparer.recover()
        self.preparer.releases.start()
        metrics.PREPARED_CLAIMS.set(self.preparer.prepared_count())
        self._update_health()
        if self.publish_slices:
            self.publisher = SlicePublisher(
                self._require_api(),
                cfg.driver_name,
                self.pool,
                PoolScope.node(cfg.node_name),
                api_version="v1beta1" if api_version == "v1beta1" else "v1",
                owner_references=owner,
            )
            self._spawn(self._slice_loop, "slices")
            self._spawn(self._watch_loop, "slice-watch")
        self._spawn(self._target_loop, "targets")
        handler = DRAHandler(self.preparer)

        def register_endpoint(server: Any) -> None:
            v1_grpc.add_DRAPluginServicer_to_server(DRAPluginV1(handler), server)
            v1beta1_grpc.add_DRAPluginServicer_to_server(DRAPluginV1Beta1(handler), server)
            h_v1_grpc.add_DRAResourceHealthServicer_to_server(HealthServiceV1(self.health), server)
            h_v1a1_grpc.add_DRAResourceHealthServicer_to_server(
                HealthServiceV1Alpha1(self.health), server
            )

        self._endpoint = UnixServer(self.paths.endpoint, register_endpoint)
        self._endpoint.start()
        self.registration = RegistrationService(cfg.driver_name, self.paths.endpoint)
        reg = self.registration
        self._reg_server = UnixServer(
            self.paths.registration,
            lambda s: reg_grpc.add_RegistrationServicer_to_server(reg, s),
            workers=2,
        )
        self._reg_server.start()
        log.info(
            "DRA driver started",
            extra={
                "driver": cfg.driver_name,
                "node": cfg.node_name,
                "endpoint": str(self.paths.endpoint),
                "registration": str(self.paths.registration),
                "api_version": api_version,
                "unhealthy": cfg.unhealthy.value,
                **{f"recovered_{k}": v for k, v in self.recovered.items()},
            },
        )

    def _labels_changed(self, labels: dict[str, str]) -> None:
        if self.registry is not None:
            self.registry.node_labels = labels
            self.registry.reload()

    def stop(self) -> None:
        """Deregister, stop serving, stop the threads. Safe to call twice."""
        self._stop.set()
        if self.node_labels is not None:
            self.node_labels.stop()
        self._dirty.set()
        self._target_wake.set()
        if self._reg_server is not None:
            self._reg_server.stop()
        self.health.close()
        if self._endpoint is not None:
            self._endpoint.stop()
        if self.registry is not None:
            self.registry.stop()
        if self.preparer is not None:
            self.preparer.releases.stop()
        if self.store is not None:
            self.store.close()
        if self.publisher is not None:
            self.publisher.stop_watch()
        if self._own_api and self.api is not None:
            self.api.close()  # type: ignore[no-untyped-call]
        for t in self._threads:
            t.join(timeout=2)
        self._threads = []
        metrics.REGISTERED.set(0)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        log.info("DRA driver stopped", extra={"driver": self.cfg.driver_name})

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=f"dra-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _node_identity(self) -> tuple[NodeLabels, list[dict[str, Any]]]:
        """The node's labels (to pick node-bound backends) and an ownerReference for slices.

        Given labels (tests, a node without API access) are used as they are; otherwise
        they are the Node's, re-read every ``node_labels_refresh`` seconds.
        """
        owner: list[dict[str, Any]] = []
        fetch = None
        known: dict[str, str] | None = None
        if self.api is not None and (self.publish_slices or self.cfg.node_labels is None):
            api = self.api
            known, ref = read_node(api, self.cfg.node_name)
            owner = [ref]
            if self.cfg.node_labels is None:

                def fetch(name: str) -> dict[str, str]:
                    return read_node(api, name)[0]

        nodes = NodeLabels(
            self.cfg.node_labels or {},
            self.cfg.node_name,
            fetch,
            refresh=self.cfg.node_labels_refresh,
            known=known if fetch is not None else None,
        )
        return nodes, owner

    # -- devices, health, slices -------------------------------------------------------------
    def devices(self) -> list[Device]:
        """The devices this node publishes now (unhealthy ones withdrawn or tainted)."""
        assert self.registry is not None
        out: list[Device] = []
        for name, state in sorted(self.registry.snapshot().items()):
            backend = state.backend
            if backend.spec.access is AccessMode.SHARED:
                continue  # the operator publishes it cluster-wide
            with self._targets_lock:
                t = self._targets.get(name)
            taints: tuple[DeviceTaint, ...] = ()
            if not state.usable:
                if self.cfg.unhealthy is UnhealthyMode.WITHDRAW:
                    continue
                status = "error" if state.error else state.health.status
                taints = (unhealthy_taint(self.cfg.driver_name, status),)
            try:
                for lane in range(backend.spec.lanes):
                    attrs = device_attributes(
                        backend,
                        lane,
                        metadata=t.metadata if t else None,
                        probed=t.probed if t else None,
                    )
                    out.append(Device(device_id(backend.name, lane), attrs, taints))
            except InvalidAttributesError as err:
                log.error("backend not published", extra={"backend": name, "error": str(err)})
        return out

    def publish_now(self) -> PublishResult:
        assert self.publisher is not None
        devices = self.devices()
        result = self.publisher.publish(devices)
        metrics.SLICE_PUBLISHES.labels("written" if result.changed else "unchanged").inc()
        metrics.PUBLISHED_DEVICES.set(len(devices))
        metrics.POOL_GENERATION.set(result.generation)
        with self._publish_cond:
            self.last_publish = result
            self._publish_count += 1
            self._publish_cond.notify_all()
        return result

    def wait_published(self, after: int, timeout: float) -> int:
        """Wait until more than ``after`` reconciles ran (tests); returns the count."""
        with self._publish_cond:
            self._publish_cond.wait_for(lambda: self._publish_count > after, timeout)
            return self._publish_count

    @property
    def publish_count(self) -> int:
        with self._publish_cond:
            return self._publish_count

    def request_publish(self) -> None:
        self._dirty.set()

    def _slice_loop(self) -> None:
        backoff = 0.5
        self._dirty.set()
        while not self._stop.is_set():
            self._dirty.wait(self.cfg.resync_seconds)
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                self.publish_now()
                backoff = 0.5
            except Exception as err:  # apiserver down or refusing: retry with backoff
                metrics.SLICE_PUBLISHES.labels("error").inc()
                log.warning("slice publish failed", extra={"error": str(err)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self._dirty.set()

    def _watch_loop(self) -> None:
        assert self.publisher is not None
        publisher = self.publisher

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            gen = ((obj.get("spec") or {}).get("pool") or {}).get("generation")
            if kind == "DELETED" or (kind == "MODIFIED" and gen != publisher.generation):
                self._dirty.set()

        publisher.watch(on_event, self._stop, timeout_seconds=10)

    def _on_change(self) -> None:
        self._update_health()
        self._target_wake.set()
        self._dirty.set()

    def _update_health(self) -> None:
        assert self.registry is not None
        devices: list[DeviceHealth] = []
        for state in self.registry.snapshot().values():
            status = status_of(state.health, state.error)
            message = state.error or state.health.reason or state.health.status
            shared = state.backend.spec.access is AccessMode.SHARED
            pool = shared_pool_name(state.backend.name) if shared else self.pool
            for lane in range(state.backend.spec.lanes):
                devices.append(
                    DeviceHealth(
                        pool,
                        device_id(state.backend.name, lane),
                        status,
                        int(state.health.checked_at),
                        message,
                    )
                )
        self.health.set(tuple(sorted(devices, key=lambda d: (d.pool, d.device))))

    # -- targets (calibration) -----------------------------------------------------------------
    def refresh_targets(self, force: bool = False) -> bool:
        """Fetch target()/metadata() where due; True when any device attributes changed."""
        assert self.registry is not None
        changed = False
        now = time.monotonic()
        for name, state in self.registry.snapshot().items():
            if state.client is None or state.error or not state.health.healthy:
                continue
            if state.backend.spec.access is AccessMode.SHARED:
                continue  # not published here: no attributes to refresh
            with self._targets_lock:
                cur = self._targets.get(name)
            due = (
                force
                or cur is None
                or cur.generation != state.generation
                or now - cur.fetched_at >= self.cfg.target_refresh_seconds
            )
            if not due:
                continue
            try:
                target = state.client.target()
                md = state.client.metadata()
            except QpuError as err:
                log.warning("target() failed", extra={"backend": name, "error": str(err)})
                continue
            probed = target_attributes(state.backend, target)
            del target  # only the derived attributes are kept
            new = _Target(state.generation, now, probed, md)
            before = self._attrs(state.backend, cur)
            with self._targets_lock:
                self._targets[name] = new
            if self._attrs(state.backend, new) != before:
                changed = True
                log.info("device attributes changed", extra={"backend": name})
        with self._targets_lock:
            for name in set(self._targets) - set(self.registry.snapshot()):
                del self._targets[name]
        if changed:
            self._dirty.set()
        return changed

    @staticmethod
    def _attrs(backend: Any, t: _Target | None) -> dict[str, Any] | None:
        if t is None:
            return None
        try:
            return device_attributes(backend, 0, metadata=t.metadata, probed=t.probed)
        except InvalidAttributesError:
            return None

    def _target_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_targets()
            except Exception:
                log.exception("target refresh failed")
            self._target_wake.wait(min(self.cfg.target_refresh_seconds, 60.0))
            self._target_wake.clear()
