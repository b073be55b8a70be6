"""The device-plugin agent: wires registry, devices, ledger, allocator, reconciler, kubelet.

Used by ``qpu-k8s device-plugin``, by tests (in-process) and by the demo. ``start()``
returns once everything runs (registration continues in the background; see
``wait_registered``); ``stop()`` ends serving without releasing anything pods still hold.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from qpu_k8s.core.credentials import CredentialSource, DirectoryCredentials
from qpu_k8s.core.kubeclient import api_client, apiserver_configured
from qpu_k8s.core.metrics import serve_metrics
from qpu_k8s.core.names import RESOURCE_NAME
from qpu_k8s.core.qrmi_client import CallTimeouts, ClientFactory, qrmi_client_factory
from qpu_k8s.core.usage import Agent
from qpu_k8s.deviceplugin import usage
from qpu_k8s.deviceplugin.allocator import Allocator
from qpu_k8s.deviceplugin.devices import DeviceBoard
from qpu_k8s.deviceplugin.podresources import PodResourcesClient, Reconciler
from qpu_k8s.deviceplugin.registration import KubeletRegistrar
from qpu_k8s.deviceplugin.server import DevicePluginServicer
from qpu_k8s.deviceplugin.state import CHECKPOINT_NAME, Ledger
from qpu_k8s.node.configfeed import ConfigFeed
from qpu_k8s.node.labels import NodeLabels, read_node
from qpu_k8s.node.pods import NodePods
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.node.releases import Debt
from qpu_k8s.node.usage import UsageReporter, registry_lookup

log = logging.getLogger(__name__)


@dataclass
class DevicePluginConfig:
    """Everything the agent needs; the CLI fills it from flags and env."""

    device_plugin_dir: Path
    pod_resources_socket: Path
    state_dir: Path
    config: Path
    # The operator's ConfigMap (namespace, name), followed through the apiserver.
    config_map: tuple[str, str] | None = None
    credentials_dir: Path | None = None
    resource_name: str = RESOURCE_NAME
    node_name: str = ""
    node_labels: dict[str, str] = field(default_factory=dict)
    kubeconfig: str | None = None
    include_shared: bool = True
    metrics_address: str = ""
    probe_timeout: float = 10.0
    acquire_timeout: float = 30.0
    reconcile_interval: float = 2.0
    release_grace: float = 10.0
    restart_hold: float = 30.0
    config_reload_interval: float = 2.0
    node_labels_refresh: float = 60.0
    # How long an acquire that missed its deadline is still waited for before it is
    # reported lost (a later answer is still released).
    abandon_after: float = 600.0
    lock_timeout: float = 30.0
    # Where QuantumUsage records are written (the agent's own namespace); "": none.
    usage_namespace: str = ""

    def call_timeouts(self) -> CallTimeouts:
        """Probes fail fast; acquire and release get the longer Allocate deadline."""
        return CallTimeouts(
            probe=self.probe_timeout, acquire=self.acquire_timeout, release=self.acquire_timeout
        )


class StateDirLock:
    """One agent per state dir: a second one (rolling update overlap) waits for the first."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"--state-dir {self.path.parent} is locked by another device plugin "
                        f"for more than {timeout:g}s; only one may run per node"
                    ) from None
                time.sleep(0.1)  # waiting for another process: nothing to be notified by
                continue
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DevicePlugin:
    """The running device plugin."""

    def __init__(
        self,
        cfg: DevicePluginConfig,
        *,
        client_factory: ClientFactory | None = None,
        credentials: CredentialSource | None = None,
    ) -> None:
        self.cfg = cfg
        if credentials is None and cfg.credentials_dir is not None:
            credentials = DirectoryCredentials(cfg.credentials_dir)
        # The apiserver is optional here (node labels only): static labels do without it.
        self.api = (
            api_client(cfg.kubeconfig)
            if cfg.node_name and apiserver_configured(cfg.kubeconfig)
            else None
        )
        api = self.api
        self.node_labels = NodeLabels(
            cfg.node_labels,
            cfg.node_name,
            (lambda name: read_node(api, name)[0]) if api is not None else None,
            refresh=cfg.node_labels_refresh,
        )
        self.registry = BackendRegistry(
            cfg.config,
            credentials,
            node_labels=cfg.node_labels,
            include_shared=cfg.include_shared,
            client_factory=client_factory or qrmi_client_factory(cfg.call_timeouts()),
            reload_interval=cfg.config_reload_interval,
            feed=ConfigFeed(api, *cfg.config_map) if api and cfg.config_map else None,
        )
        self.board = DeviceBoard(self.registry)
        self.ledger = Ledger(cfg.state_dir / CHECKPOINT_NAME, release_grace=cfg.release_grace)
        self.allocator = Allocator(
            self.board,
            self.registry,
            self.ledger,
            cfg.resource_name,
            abandon_after=cfg.abandon_after,
            on_released=self._released,
        )
        self.usage = UsageReporter(
            agent=Agent.DEVICE_PLUGIN,
            node=cfg.node_name,
            namespace=cfg.usage_namespace,
            state_dir=cfg.state_dir,
            api=self.api,
            backends=registry_lookup(self.registry),
            exclusive=True,  # the state directory's lock is ours
        )
        self.pod_resources = PodResourcesClient(cfg.pod_resources_socket)
        # With the apiserver, the node's pods say when a container has ended for good: its
        # session is released at once instead of after the grace period.
        self.pods = (
            NodePods(api, cfg.node_name, cfg.resource_name, on_change=self._pods_changed)
            if api is not None
            else None
        )
        self.reconciler = Reconciler(
            self.ledger,
            self.pod_resources.list,
            self.allocator.releases.poke,
            cfg.resource_name,
            interval=cfg.reconcile_interval,
            restart_hold=cfg.restart_hold,
            pods=self.pods,
        )
        self.registrar = KubeletRegistrar(
            cfg.device_plugin_dir,
            cfg.resource_name,
            self._servicer,
            on_kubelet_restart=self.reconciler.kubelet_restarted,
        )
        self._lock = StateDirLock(cfg.state_dir)
        self._metrics: WSGIServer | None = None
        self._started = False

    def _servicer(self) -> DevicePluginServicer:
        # No reconcile after each Allocate: binding is not urgent, and a List of every pod
        # on the node per Allocate would make Allocate's cost grow with the node's pods.
        return DevicePluginServicer(self.board, self.allocator)

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.server_port if self._metrics else None

    def start(self) -> None:
        # Metrics first: what recovery finds (acquisitions lost in a crash) must be visible
        # on the first scrape, even of an agent that crash-loops.
        self._metrics = serve_metrics(self.cfg.metrics_address)
        self._lock.acquire(self.cfg.lock_timeout)
        try:
            self.ledger.load(time.time())
            self.usage.open()
            # The kubelet may have (re)started with us (node reboot) and list no pods until
            # it has synced them: decide no release before the hold has passed.
            self.ledger.interrupt(time.time(), self.cfg.restart_hold, "plugin started")
            self.registry.node_labels = self.node_labels.load()
            self.registry.start()
            if self.usage.enabled:  # after the registry: records name the resource id
                usage.sweep(self.ledger, self.usage)
            self.board.refresh()
            self.node_labels.watch(self._labels_changed)
            self.allocator.releases.start()
            self.usage.start()
            if self.pods is not None:
                self.pods.start()
            self.reconciler.start()
            self.registrar.start()
        except BaseException:
            self._lock.release()
            self._stop_metrics()
            raise
        self._started = True
        log.info(
            "device plugin started",
            extra={
                "resource": self.cfg.resource_name,
                "socket": str(self.registrar.socket_path),
                "metrics_port": self.metrics_port or 0,
                "backends": len(self.registry.snapshot()),
            },
        )

    def _released(self, debt: Debt) -> None:
        if self.usage.enabled:
            usage.report(self.ledger, self.usage, debt.id)

    def _pods_changed(self) -> None:
        self.reconciler.poke()

    def _stop_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None

    def _labels_changed(self, labels: dict[str, str]) -> None:
        self.registry.node_labels = labels
        self.registry.reload()

    def wait_registered(self, count: int = 1, timeout: float = 10.0) -> bool:
        return self.registrar.wait_registered(count, timeout)

    def stop(self) -> None:
        """Stop serving; acquisitions of running pods stay held (checkpointed)."""
        if not self._started:
            return
        self._started = False
        self.registrar.stop()
        if self.pods is not None:
            self.pods.stop()
        self.reconciler.stop()
        self.allocator.releases.stop()
        self.usage.stop()
        self.node_labels.stop()
        self.board.devices.close()
        self.registry.stop()
        self.pod_resources.close()
        if self.api is not None:
            self.api.close()  # type: ignore[no-untyped-call]
        self._stop_metrics()
        self.ledger.close()
        self._lock.release()
        live = len(self.ledger.live())
        log.info("device plugin stopped; acquisitions kept for running pods", extra={"live": live})
