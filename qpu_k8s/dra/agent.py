"""The DRA node driver: wiring of the registry, state, prepare logic, slices and servers.

Start-up order matters: metrics first (what recovery finds must be visible), then the
state and what a reboot or crash left (:meth:`Preparer.recover`), the slices as last
known, the DRA endpoint, and only then the registration socket, so the kubelet never
reaches a driver that cannot answer. Shutdown reverses it: the registration socket goes
first (the kubelet stops sending work), then the endpoint. Slices are left in place on
shutdown (a restart or rolling update republishes them; the kubelet removes a node's
slices itself when a driver stays unregistered).

What runs: the registry (config reload, probes: :mod:`qpu_k8s.node.registry`), the
calibration cache (:mod:`.calibration`), the slices (:mod:`.slicesync`), the release
runner of owed releases (:mod:`qpu_k8s.node.releases`), the node labels refresh, the
claim status writer (:mod:`.claimstatus`) and the claim watcher that acquires before
binding (:mod:`.binding`; with the status writer only: it is what sets the condition).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from kubernetes import client

from qpu_k8s.core.checkpoint import BOOT_ID_PATH, read_boot_id
from qpu_k8s.core.credentials import DirectoryCredentials
from qpu_k8s.core.kubeclient import api_client
from qpu_k8s.core.metrics import serve_metrics
from qpu_k8s.core.names import DRIVER_NAME
from qpu_k8s.core.qrmi_client import CallTimeouts, ClientFactory, qrmi_client_factory
from qpu_k8s.core.usage import Agent
from qpu_k8s.dra.usage import UsageSink
from qpu_k8s.node.configfeed import ConfigFeed
from qpu_k8s.node.grpcserver import UnixServer
from qpu_k8s.node.labels import NodeLabels, read_node
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.node.releases import Backoff
from qpu_k8s.node.usage import UsageReporter, registry_lookup
from qpu_k8s.proto.dra.v1 import api_pb2_grpc as v1_grpc
from qpu_k8s.proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from qpu_k8s.proto.dra_health.v1 import api_pb2_grpc as h_v1_grpc
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2_grpc as h_v1a1_grpc
from qpu_k8s.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from qpu_k8s.resourceslices.build import PoolScope
from qpu_k8s.resourceslices.policy import DeviceModel, UnhealthyMode
from qpu_k8s.resourceslices.publish import SlicePublisher, detect_api_version

from . import metrics
from .binding import ClaimWatcher
from .calibration import Calibration
from .cdi import CdiWriter
from .claims import ClaimSource, KubeClaims
from .claimstatus import ClaimStatusPublisher, StatusWriter
from .health import HealthServiceV1, HealthServiceV1Alpha1, health_board, project
from .plugin import DRAHandler, DRAPluginV1, DRAPluginV1Beta1
from .prepare import Preparer
from .registration import RegistrationService, SocketPaths, instance_id, socket_paths
from .slicesync import NodeSlices
from .state import StateStore

log = logging.getLogger(__name__)

# Deadline of one apiserver request at start-up (API discovery).
API_TIMEOUT = 30.0


@dataclass
class DraDriverConfig:
    """Everything the driver needs; the CLI fills it from flags and env."""

    node_name: str
    config_path: Path
    # The operator's ConfigMap (namespace, name), followed through the apiserver.
    config_map: tuple[str, str] | None = None
    plugins_dir: Path = Path("/var/lib/kubelet/plugins")
    registry_dir: Path = Path("/var/lib/kubelet/plugins_registry")
    cdi_dir: Path = Path("/var/run/cdi")
    state_dir: Path = Path("/var/lib/qpu-k8s/dra")
    credentials_dir: Path | None = None
    kubeconfig: Path | None = None
    driver_name: str = DRIVER_NAME
    boot_id_file: Path = BOOT_ID_PATH
    unhealthy: UnhealthyMode = UnhealthyMode.WITHDRAW
    # One device per lane, or one per QPU with its lanes as consumable capacity.
    device_model: DeviceModel = DeviceModel.LANES
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
    # Write status.devices of prepared claims (needs the chart's resourceclaims/status and
    # resourceclaims/driver rules).
    claim_status: bool = True
    # First retry delay of a failed status write (doubling, at most a minute).
    claim_status_retry_seconds: float = 1.0
    # Where QuantumUsage records are written (the agent's own namespace); "": none.
    usage_namespace: str = ""
    # Acquire before bind for backends that do not set acquireBeforeBind (node-bound ones;
    # needs claim_status and the chart's list/watch on resourceclaims).
    acquire_before_bind: bool = False

    def call_timeouts(self) -> CallTimeouts:
        """Probes fail fast; acquire and release get the longer prepare deadline."""
        return CallTimeouts(
            probe=self.probe_timeout, acquire=self.acquire_timeout, release=self.acquire_timeout
        )


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
        status_writer: StatusWriter | None = None,
    ) -> None:
        self.cfg = cfg
        self._own_api = api is None and (claims is None or publish_slices)
        self.api = api_client(cfg.kubeconfig) if self._own_api else api
        self.claims = claims or KubeClaims(self._require_api())
        self.client_factory = client_factory or qrmi_client_factory(cfg.call_timeouts())
        self.publish_slices = publish_slices and self.api is not None
        if status_writer is None and isinstance(self.claims, KubeClaims):
            status_writer = self.claims
        self.claim_status: ClaimStatusPublisher | None = None
        if cfg.claim_status and status_writer is not None:
            # One field manager per node: the entries of a claim are written where it is
            # prepared, and each node owns its own.
            self.claim_status = ClaimStatusPublisher(
                status_writer,
                f"{cfg.driver_name}/{cfg.node_name}",
                backoff=Backoff(base=cfg.claim_status_retry_seconds, cap=60.0),
            )
        self.ident = cfg.instance or instance_id()
        self.paths: SocketPaths = socket_paths(
            cfg.driver_name, cfg.plugins_dir, cfg.registry_dir, self.ident
        )
        self.pool = cfg.node_name
        self.health = health_board()
        self.cdi = CdiWriter(cfg.cdi_dir)
        self.registry: BackendRegistry | None = None
        self.node_labels: NodeLabels | None = None
        self.store: StateStore | None = None
        self.preparer: Preparer | None = None
        self.usage: UsageReporter | None = None
        self.calibration: Calibration | None = None
        self.slices: NodeSlices | None = None
        self.binding: ClaimWatcher | None = None
        self.registration: RegistrationService | None = None
        self._endpoint: UnixServer | None = None
        self._reg_server: UnixServer | None = None
        self._metrics: WSGIServer | None = None
        self.recovered: dict[str, int] = {}

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
        api_version = cfg.api_version
        if self.publish_slices and api_version == "auto":
            api_version = detect_api_version(self._require_api(), API_TIMEOUT) or "v1"
        if isinstance(self.claims, KubeClaims) and api_version in ("v1", "v1beta1"):
            self.claims.api_version = api_version
        creds = DirectoryCredentials(cfg.credentials_dir) if cfg.credentials_dir else None
        self.registry = registry = BackendRegistry(
            cfg.config_path,
            creds,
            self.client_factory,
            node_labels=self.node_labels.load(),
            # Shared backends are published cluster-wide by the operator, but a claim on one
            # is prepared (acquired) here, on the node that runs the pod.
            include_shared=True,
            reload_interval=cfg.reload_interval,
            feed=ConfigFeed(self.api, *cfg.config_map) if self.api and cfg.config_map else None,
        )
        self.store = StateStore(cfg.state_dir, boot_id, self.ident)
        self.store.load()
        self.preparer = Preparer(
            driver=cfg.driver_name,
            pool=self.pool,
            registry=registry,
            claims=self.claims,
            cdi=self.cdi,
            store=self.store,
            status=self.claim_status,
            node=cfg.node_name,
        )
        self.usage = UsageReporter(
            agent=Agent.DRA,
            node=cfg.node_name,
            namespace=cfg.usage_namespace,
            state_dir=cfg.state_dir,
            api=self.api,
            backends=registry_lookup(registry),
        )
        self.usage.open()
        if self.usage.enabled:
            self.preparer.usage = UsageSink(self.usage)
        self.calibration = Calibration(
            registry,
            self.store,
            refresh_seconds=cfg.target_refresh_seconds,
            on_change=self._on_change,
        )
        self.calibration.load()
        registry.subscribe(self._on_change)
        registry.start()
        self.node_labels.watch(self._labels_changed)
        self.recovered = self.preparer.recover()
        self.preparer.releases.start()
        self.usage.start()
        if self.claim_status is not None:
            self.claim_status.start()
            if self.api is not None and self.publish_slices:
                self.binding = ClaimWatcher(
                    self.preparer,
                    self.api,
                    self.claim_status,
                    api_version="v1beta1" if api_version == "v1beta1" else "v1",
                    probe=registry.probe_now,
                    settle=lambda: self.slices is not None and self.slices.settle(10.0),
                )
                self.binding.start()
        metrics.PREPARED_CLAIMS.set(self.preparer.prepared_count())
        self.health.set(project(registry.snapshot(), self.pool))
        if self.publish_slices:
            publisher = SlicePublisher(
                self._require_api(),
                cfg.driver_name,
                self.pool,
                PoolScope.node(cfg.node_name),
                api_version="v1beta1" if api_version == "v1beta1" else "v1",
                owner_references=owner,
            )
            self.slices = NodeSlices(
                registry,
                self.calibration,
                publisher,
                mode=cfg.unhealthy,
                model=cfg.device_model,
                resync_seconds=cfg.resync_seconds,
                binding_default=cfg.acquire_before_bind if self.binding is not None else None,
            )
            self.slices.start()
        self.calibration.start()
        self._serve()
        log.info(
            "DRA driver started",
            extra={
                "driver": cfg.driver_name,
                "node": cfg.node_name,
                "endpoint": str(self.paths.endpoint),
                "registration": str(self.paths.registration),
                "api_version": api_version,
                "unhealthy": cfg.unhealthy.value,
                "device_model": cfg.device_model.value,
                **{f"recovered_{k}": v for k, v in self.recovered.items()},
            },
        )

    def _serve(self) -> None:
        """The DRA and health services, then the registration socket the kubelet finds."""
        assert self.preparer is not None
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
        self.registration = reg = RegistrationService(self.cfg.driver_name, self.paths.endpoint)
        self._reg_server = UnixServer(
            self.paths.registration,
            lambda s: reg_grpc.add_RegistrationServicer_to_server(reg, s),
            workers=2,
        )
        self._reg_server.start()

    def _on_change(self) -> None:
        """Config, health or calibration changed: health stream, calibration, slices."""
        if self.registry is not None:
            self.health.set(project(self.registry.snapshot(), self.pool))
        if self.calibration is not None:
            self.calibration.wake()
        if self.slices is not None:
            self.slices.changed()

    def _labels_changed(self, labels: dict[str, str]) -> None:
        if self.registry is not None:
            self.registry.node_labels = labels
            self.registry.reload()

    def stop(self) -> None:
        """Deregister, stop serving, stop the loops. Safe to call twice."""
        if self.node_labels is not None:
            self.node_labels.stop()
        if self._reg_server is not None:
            self._reg_server.stop()
        self.health.close()
        if self._endpoint is not None:
            self._endpoint.stop()
        if self.slices is not None:
            self.slices.stop()
        if self.calibration is not None:
            self.calibration.stop()
        if self.registry is not None:
            self.registry.stop()
        if self.binding is not None:
            self.binding.stop()
        if self.preparer is not None:
            self.preparer.releases.stop()
        if self.usage is not None:
            self.usage.stop()
        if self.claim_status is not None:
            self.claim_status.stop()
        if self.store is not None:
            self.store.close()
        if self._own_api and self.api is not None:
            self.api.close()  # type: ignore[no-untyped-call]
        metrics.REGISTERED.set(0)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        log.info("DRA driver stopped", extra={"driver": self.cfg.driver_name})

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
