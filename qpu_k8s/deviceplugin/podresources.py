"""Finding ended pods: the PodResources API client and the release reconciler.

The device-plugin API has no "deallocate". The kubelet's PodResources ``List`` (v1) says
which devices each running container holds; since kubelet 1.16 it lists active pods only,
so a pod drops out when it terminates or is deleted. The reconciler lists at an interval
(and on demand, e.g. right after an Allocate), feeds the result to the
:class:`~qpu_k8s.deviceplugin.state.Ledger` state machine, and runs the releases it
decides, each with backoff on failure. A failed List never causes a release.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import grpc

from qpu_k8s.deviceplugin import metrics
from qpu_k8s.deviceplugin.state import Acquisition, ContainerRef, Ledger
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
    """Lists pod resources, drives the ledger, and runs due releases on a small pool."""

    def __init__(
        self,
        ledger: Ledger,
        lister: Callable[[], api_pb2.ListPodResourcesResponse],
        release: Callable[[Acquisition], bool],
        resource_name: str,
        *,
        interval: float = 2.0,
        restart_hold: float = 30.0,
        workers: int = 4,
    ) -> None:
        self.ledger = ledger
        self.lister = lister
        self.release = release
        self.resource_name = resource_name
        self.interval = interval
        self.restart_hold = restart_hold
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="release")
        self._thread: threading.Thread | None = None
        self._list_ok: bool | None = None
        self._running: set[Future[None]] = set()
        self._running_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self, drain: float = 5.0) -> None:
        """Stop listing and releasing; live acquisitions stay held (pods still run).

        Releases already talking to the vendor get up to ``drain`` seconds to finish, so
        their outcome is checkpointed rather than retried (and maybe repeated) next start.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._running_lock:
            running = list(self._running)
        wait(running, timeout=drain)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poke(self) -> None:
        """Reconcile as soon as possible (after an Allocate, a kubelet restart...)."""
        self._wake.set()

    def kubelet_restarted(self) -> None:
        """Its pod list is empty until it has synced: hold releases back for a while."""
        self.ledger.interrupt(time.time(), self.restart_hold, "kubelet restarted")
        self.poke()

    def pass_once(self) -> None:
        """One List + reconcile + submit due releases."""
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
        else:
            if self._list_ok is False:
                log.info("PodResources List works again")
            self._list_ok = True
            metrics.RECONCILES.labels("ok").inc()
            self.ledger.reconcile(held_devices(resp, self.resource_name), time.time())
        for acq in self.ledger.due_releases(time.time()):
            if self._stop.is_set():
                break
            fut = self._pool.submit(self._release, acq)
            with self._running_lock:
                self._running.add(fut)
            fut.add_done_callback(self._done)

    def _done(self, fut: Future[None]) -> None:
        with self._running_lock:
            self._running.discard(fut)

    def _release(self, acq: Acquisition) -> None:
        try:
            self.release(acq)
        except Exception:
            log.exception("release crashed", extra={"acquisition": acq.id})

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pass_once()
            except Exception:
                log.exception("reconcile pass failed")
            timeout = self.interval
            due = self.ledger.next_release_due()
            if due is not None:
                timeout = max(0.05, min(timeout, due - time.time()))
            self._wake.wait(timeout)
            self._wake.clear()


def _details(exc: BaseException) -> str:
    if isinstance(exc, grpc.Call):
        return str(exc.details())
    return repr(exc)
