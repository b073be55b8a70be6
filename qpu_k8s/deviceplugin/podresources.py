"""Finding ended pods: the PodResources API client and the release reconciler.

The device-plugin API has no "deallocate". The kubelet's PodResources ``List`` (v1) says
which devices each running container holds; since kubelet 1.16 it lists active pods only,
so a pod drops out when it terminates or is deleted. The reconciler lists at an interval
(and on demand, e.g. right after an Allocate) and feeds the result to the
:class:`~qpu_k8s.deviceplugin.state.Ledger` state machine; the releases it decides are paid
by the shared :class:`~qpu_k8s.node.releases.ReleaseRunner`. A failed List never causes a
release.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from qpu_k8s.deviceplugin import metrics
from qpu_k8s.deviceplugin.state import ContainerRef, Ledger
from qpu_k8s.node.pods import NodePods
from qpu_k8s.proto.podresources.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

# The kubelet's own limit for PodResources messages.
MAX_MESSAGE = 16 * 1024 * 1024


class PodResourcesClient:
    """``v1.PodResourcesLister/List`` over the kubelet's pod-resources unix socket."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None

    def list(self) -> api_pb2.ListPodResourcesResponse:
        if self._stub is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket_path.absolute()}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        try:
            return self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError:
            self.close()  # the kubelet may come back on a new socket inode
            raise

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None


def held_devices(
    resp: api_pb2.ListPodResourcesResponse, resource_name: str
) -> dict[frozenset[str], ContainerRef]:
    """Map each container's set of ``resource_name`` device IDs to the container."""
    held: dict[frozenset[str], ContainerRef] = {}
    for pod in resp.pod_resources:
        for ctr in pod.containers:
            ids = {
                dev_id
                for cd in ctr.devices
                if cd.resource_name == resource_name
                for dev_id in cd.device_ids
            }
            if ids:
                held[frozenset(ids)] = ContainerRef(
                    namespace=pod.namespace, pod=pod.name, container=ctr.name
                )
    return held


class Reconciler:
    """Lists pod resources and drives the ledger; the releases it decides are paid by the
    release runner, which it pokes."""

    def __init__(
        self,
        ledger: Ledger,
        lister: Callable[[], api_pb2.ListPodResourcesResponse],
        releases_due: Callable[[], None],
        resource_name: str,
        *,
        interval: float = 2.0,
        restart_hold: float = 30.0,
        pods: NodePods | None = None,
    ) -> None:
        self.ledger = ledger
        self.pods = pods
        self.lister = lister
        self.releases_due = releases_due
        self.resource_name = resource_name
        self.interval = interval
        self.restart_hold = restart_hold
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._list_ok: bool | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listing; live acquisitions stay held (pods still run)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def poke(self) -> None:
        """Reconcile as soon as possible (after an Allocate, a kubelet restart...)."""
        self._wake.set()

    def kubelet_restarted(self) -> None:
        """Its pod list is empty until it has synced: hold releases back for a while."""
        self.ledger.interrupt(time.time(), self.restart_hold, "kubelet restarted")
        self.poke()

    def pass_once(self) -> None:
        """One List + reconcile; a release decided is handed to the release runner."""
        try:
            resp = self.lister()
        except grpc.RpcError as exc:
            metrics.RECONCILES.labels("error").inc()
            self.ledger.interrupt(time.time(), why="PodResources List failed")
            if self._list_ok is not False:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                log.warning(
                    "PodResources List failed; no release is decided until it works again",
                    extra={"code": code.name if code else "", "error": _details(exc)},
                )
            self._list_ok = False
            return
        if self._list_ok is False:
            log.info("PodResources List works again")
        self._list_ok = True
        metrics.RECONCILES.labels("ok").inc()
        finished = None
        if self.pods is not None:
            pods = self.pods
            finished = lambda c: pods.finished(c.namespace, c.pod, c.container)  # noqa: E731
            running = pods.running_with_resource()
            listed = {(p.namespace, p.name) for p in resp.pod_resources}
            if running is not None and running <= listed:
                self.ledger.end_hold("the kubelet lists every running pod that asks for it")
        held = held_devices(resp, self.resource_name)
        if self.ledger.reconcile(held, time.time(), finished):
            self.releases_due()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pass_once()
            except Exception:
                log.exception("reconcile pass failed")
            self._wake.wait(self.interval)
            self._wake.clear()


def _details(exc: BaseException) -> str:
    if isinstance(exc, grpc.Call):
        return str(exc.details())
    return repr(exc)
