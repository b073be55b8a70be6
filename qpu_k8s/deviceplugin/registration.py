"""Serving our socket, registering with the kubelet, and noticing when it restarts.

Order matters: the kubelet dials the plugin's endpoint while handling Register, so we serve
``<device-plugin dir>/<endpoint>`` first, then call ``v1beta1.Registration/Register`` on
``<dir>/kubelet.sock``. A restarting kubelet wipes the directory (our socket vanishes) and
creates a new ``kubelet.sock`` (new inode); a watch thread checks both every ``poll``
seconds and then serves a fresh socket and registers again, so the node's capacity comes
back within about a second. Register failures (kubelet not up yet) are retried with
backoff; nothing here touches acquisitions.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from qpu_k8s.deviceplugin import metrics
from qpu_k8s.deviceplugin.server import OPTIONS, DevicePluginServicer
from qpu_k8s.node.grpcserver import UnixServer, socket_inode
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
MAX_UNIX_PATH = 107


def endpoint_name(resource_name: str) -> str:
    """Our socket's file name, derived from the resource name (unique per resource)."""
    return "qpu-k8s-" + re.sub(r"[^A-Za-z0-9_.-]", "_", resource_name) + ".sock"


class KubeletRegistrar:
    """Keeps one device-plugin endpoint served and registered across kubelet restarts."""

    def __init__(
        self,
        plugin_dir: Path,
        resource_name: str,
        make_servicer: Callable[[], DevicePluginServicer],
        *,
        poll: float = 0.1,
        register_timeout: float = 5.0,
        workers: int = 8,
        on_kubelet_restart: Callable[[], None] | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir.absolute()
        self.resource_name = resource_name
        self.endpoint = endpoint_name(resource_name)
        self.socket_path = self.plugin_dir / self.endpoint
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        if len(os.fsencode(self.socket_path)) > MAX_UNIX_PATH:
            raise ValueError(
                f"--device-plugin-dir: socket path {self.socket_path} is longer than "
                f"{MAX_UNIX_PATH} bytes; use a shorter directory"
            )
        self.make_servicer = make_servicer
        self.poll = poll
        self.register_timeout = register_timeout
        self.workers = workers
        self.on_kubelet_restart = on_kubelet_restart
        self.registrations = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: UnixServer | None = None
        self._servicer: DevicePluginServicer | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubelet-registrar", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove our socket (the kubelet then marks the devices gone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._unserve()

    def wait_registered(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` successful registrations happened."""
        with self._cond:
            return self._cond.wait_for(lambda: self.registrations >= count, timeout=timeout)

    # -- serving ----------------------------------------------------------------------------
    def _serve(self) -> int:
        self._unserve()
        servicer = self.make_servicer()

        def register(server: grpc.Server) -> None:
            api_pb2_grpc.add_DevicePluginServicer_to_server(servicer, server)

        server = UnixServer(self.socket_path, register, workers=self.workers, name="dp")
        server.start()
        self._server, self._servicer = server, servicer
        log.info("serving device plugin", extra={"socket": str(self.socket_path)})
        return server.inode or 0

    def _unserve(self) -> None:
        server, servicer = self._server, self._servicer
        self._server = self._servicer = None
        if servicer is not None:
            servicer.stop()
        if server is not None:
            server.stop()

    def _register(self) -> str | None:
        """One Register call; returns the error text, or None on success."""
        channel = grpc.insecure_channel(f"unix://{self.kubelet_socket}")
        try:
            grpc.channel_ready_future(channel).result(timeout=self.register_timeout)
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version=API_VERSION,
                    endpoint=self.endpoint,
                    resource_name=self.resource_name,
                    options=OPTIONS,
                ),
                timeout=self.register_timeout,
            )
        except grpc.FutureTimeoutError:
            return f"kubelet socket {self.kubelet_socket} did not accept a connection"
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call):
                return f"{exc.code().name}: {exc.details()}"
            return repr(exc)
        finally:
            # Closing a channel takes ~0.2 s; keep it off the path to being registered.
            threading.Thread(target=channel.close, name="close-registration", daemon=True).start()
        return None

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        last_error = ""
        while not self._stop.is_set():
            kubelet_inode = socket_inode(self.kubelet_socket)
            if kubelet_inode is None:
                if last_error != "no-kubelet":
                    log.info("waiting for the kubelet", extra={"socket": str(self.kubelet_socket)})
                    last_error = "no-kubelet"
                self._stop.wait(self.poll)
                continue
            try:
                our_inode = self._serve()
            except Exception as exc:
                log.error("cannot serve the device plugin socket", extra={"error": str(exc)})
                self._stop.wait(min(backoff, 5.0))
                backoff *= 2
                continue
            error = self._register()
            if error is not None:
                if error != last_error:
                    log.warning(
                        "register with the kubelet failed; retrying", extra={"error": error}
                    )
                    last_error = error
                self._unserve()
                self._stop.wait(min(backoff, 5.0))
                backoff = min(backoff * 2, 5.0)
                continue
            backoff, last_error = 0.1, ""
            metrics.REGISTRATIONS.inc()
            with self._cond:
                self.registrations += 1
                self._cond.notify_all()
            log.info(
                "registered with the kubelet",
                extra={
                    "resource": self.resource_name,
                    "endpoint": self.endpoint,
                    "version": API_VERSION,
                    "registrations": self.registrations,
                },
            )
            why = self._watch(kubelet_inode, our_inode)
            if why:
                log.warning(
                    "kubelet restart detected; serving and registering again", extra={"why": why}
                )
                if self.on_kubelet_restart is not None:
                    self.on_kubelet_restart()

    def _watch(self, kubelet_inode: int, our_inode: int) -> str:
        """Wait until the kubelet restarted (or we stop); returns what was seen."""
        while not self._stop.wait(self.poll):
            if socket_inode(self.socket_path) != our_inode:
                return "our socket was removed"
            now = socket_inode(self.kubelet_socket)
            if now != kubelet_inode:
                return "kubelet.sock was removed" if now is None else "kubelet.sock was recreated"
        return ""
