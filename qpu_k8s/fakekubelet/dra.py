"""Fake kubelet, DRA side: the plugin watcher's registration handshake and a DRA client.

Like the kubelet's plugin manager it scans the registration directory for new sockets
(names starting with "." are ignored), calls ``/pluginregistration.Registration/GetInfo``,
validates type ``DRAPlugin`` and the advertised services, answers with
``NotifyRegistrationStatus`` and then reaches the plugin's endpoint with
``/k8s.io.kubelet.pkg.apis.dra.<v1|v1beta1>.DRAPlugin/...`` and the health stream
``/<v1alpha1|v1>.DRAResourceHealth/NodeWatchResources``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import grpc

from qpu_k8s.fakekubelet.common import (
    POLL_INTERVAL,
    KubeletFakeError,
    describe_rpc_error,
    is_socket,
    rpc_code,
    unix_target,
    wait_on,
)
from qpu_k8s.proto.dra.v1 import api_pb2 as dra_v1
from qpu_k8s.proto.dra.v1 import api_pb2_grpc as dra_v1_grpc
from qpu_k8s.proto.dra.v1beta1 import api_pb2 as dra_v1beta1
from qpu_k8s.proto.dra.v1beta1 import api_pb2_grpc as dra_v1beta1_grpc
from qpu_k8s.proto.dra_health.v1 import api_pb2 as health_v1
from qpu_k8s.proto.dra_health.v1 import api_pb2_grpc as health_v1_grpc
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2 as health_v1alpha1
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2_grpc as health_v1alpha1_grpc
from qpu_k8s.proto.pluginregistration.v1 import api_pb2 as reg_pb2
from qpu_k8s.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc

DRAVersion = Literal["v1", "v1beta1"]
HealthVersion = Literal["v1alpha1", "v1"]
PLUGIN_TYPE = "DRAPlugin"
# Newest first, as the kubelet lists them; "<last proto package element>.<service>".
KUBELET_DRA_SERVICES: tuple[str, ...] = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


@dataclass(frozen=True)
class ClaimRef:
    """What the kubelet sends per claim: namespace, UID and name of the ResourceClaim."""

    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class AnsweredDevice:
    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None  # only v1 carries it


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[AnsweredDevice, ...]
    error: str = ""


@dataclass(frozen=True)
class DRARegistration:
    driver_name: str
    endpoint: str
    supported_versions: tuple[str, ...]
    socket_path: Path
    chosen_version: DRAVersion

    @property
    def health_versions(self) -> tuple[HealthVersion, ...]:
        found: list[HealthVersion] = []
        for service in self.supported_versions:
            if service == "v1.DRAResourceHealth":
                found.append("v1")
            elif service == "v1alpha1.DRAResourceHealth":
                found.append("v1alpha1")
        return tuple(found)


@dataclass(frozen=True)
class DRARejection:
    socket_path: Path
    plugin_type: str
    driver_name: str
    message: str  # what NotifyRegistrationStatus carried


@dataclass(frozen=True)
class DeviceHealthState:
    pool_name: str
    device_name: str
    health: str  # "UNKNOWN", "HEALTHY" or "UNHEALTHY"
    last_updated_time: int
    health_check_timeout_seconds: int
    message: str


def _go_quote_list(items: Iterable[str]) -> str:
    """How Go's %q prints a []string, for messages that match the kubelet's."""
    return "[" + " ".join(f'"{i}"' for i in items) + "]"


def choose_service(supported: Sequence[str]) -> DRAVersion | str:
    """The kubelet's pick (first plugin entry it supports), or the validation error."""
    if not supported:
        return "empty list of supported gRPC services (aka supported versions)"
    for service in supported:
        if service == "v1.DRAPlugin":
            return "v1"
        if service == "v1beta1.DRAPlugin":
            return "v1beta1"
    return (
        f"none of services supported by the plugin ({_go_quote_list(supported)}) "
        f"are supported by the kubelet ({_go_quote_list(KUBELET_DRA_SERVICES)})"
    )


class HealthWatch:
    """Consumes one NodeWatchResources stream in a thread, keeping the latest device list."""

    def __init__(self, channel: grpc.Channel, version: HealthVersion) -> None:
        self.version = version
        self._cond = threading.Condition()
        self._latest: dict[tuple[str, str], DeviceHealthState] | None = None
        self._updates = 0
        self._ended = False
        self._error: str | None = None
        responses: (
            Iterable[health_v1.NodeWatchResourcesResponse]
            | Iterable[health_v1alpha1.NodeWatchResourcesResponse]
        )
        if version == "v1":
            call_v1 = health_v1_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                health_v1.NodeWatchResourcesRequest()
            )
            self._call: grpc.Call = call_v1
            responses = call_v1
        else:
            call_a = health_v1alpha1_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                health_v1alpha1.NodeWatchResourcesRequest()
            )
            self._call = call_a
            responses = call_a
        self._thread = threading.Thread(
            target=self._consume, args=(responses,), name=f"fake-kubelet-health-{version}"
        )
        self._thread.daemon = True
        self._thread.start()

    def _consume(
        self,
        responses: Iterable[health_v1.NodeWatchResourcesResponse]
        | Iterable[health_v1alpha1.NodeWatchResourcesResponse],
    ) -> None:
        error: str | None = None
        try:
            for response in responses:
                latest = {}
                for d in response.devices:
                    name = (
                        health_v1.HealthStatus.Name(d.health)
                        if isinstance(d, health_v1.DeviceHealth)
                        else health_v1alpha1.HealthStatus.Name(d.health)
                    )
                    state = DeviceHealthState(
                        d.device.pool_name,
                        d.device.device_name,
                        name,
                        d.last_updated_time,
                        d.health_check_timeout_seconds,
                        d.message,
                    )
                    latest[(state.pool_name, state.device_name)] = state
                with self._cond:
                    self._latest = latest
                    self._updates += 1
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.CANCELLED:
                error = describe_rpc_error(exc)
        with self._cond:
            self._ended, self._error = True, error
            self._cond.notify_all()

    @property
    def latest(self) -> dict[tuple[str, str], DeviceHealthState]:
        """(pool, device) -> state from the newest message; empty before the first."""
        with self._cond:
            return dict(self._latest or {})

    @property
    def updates(self) -> int:
        with self._cond:
            return self._updates

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended

    @property
    def error(self) -> str | None:
        with self._cond:
            return self._error

    def wait_for(
        self,
        predicate: Callable[[dict[tuple[str, str], DeviceHealthState]], bool] = bool,
        timeout: float = 5.0,
    ) -> dict[tuple[str, str], DeviceHealthState]:
        """Wait until the newest health list satisfies ``predicate`` (default: non-empty)."""

        def check() -> dict[tuple[str, str], DeviceHealthState] | None:
            if self._latest is not None and predicate(dict(self._latest)):
                return dict(self._latest)
            if self._ended:
                raise KubeletFakeError(f"health stream ended ({self._error or 'cleanly'})")
            return None

        return wait_on(self._cond, check, timeout, lambda: f"device health matching {predicate!r}")

    def close(self) -> None:
        self._call.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> HealthWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _prepared(device: dra_v1.Device | dra_v1beta1.Device) -> AnsweredDevice:
    share_id = None
    if isinstance(device, dra_v1.Device) and device.HasField("share_id"):
        share_id = device.share_id
    return AnsweredDevice(
        tuple(device.request_names),
        device.pool_name,
        device.device_name,
        tuple(device.cdi_device_ids),
        share_id,
    )


class DRAPluginClient:
    """The kubelet's connection to one registered DRA plugin endpoint."""

    def __init__(self, registration: DRARegistration, call_timeout: float = 5.0) -> None:
        self.registration = registration
        self.call_timeout = call_timeout
        self._channel = grpc.insecure_channel(unix_target(Path(registration.endpoint)))
        self._v1 = dra_v1_grpc.DRAPluginStub(self._channel)
        self._v1beta1 = dra_v1beta1_grpc.DRAPluginStub(self._channel)
        self._watches: list[HealthWatch] = []

    def node_prepare_resources(
        self, claims: Sequence[ClaimRef], version: DRAVersion | None = None
    ) -> dict[str, PrepareResult]:
        """NodePrepareResources; the result maps claim UID to devices or error."""
        version = version or self.registration.chosen_version
        if version == "v1":
            r1 = self._v1.NodePrepareResources(
                dra_v1.NodePrepareResourcesRequest(
                    claims=[
                        dra_v1.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims
                    ]
                ),
                timeout=self.call_timeout,
            )
            return {
                uid: PrepareResult(tuple(_prepared(d) for d in res.devices), res.error)
                for uid, res in r1.claims.items()
            }
        rb = self._v1beta1.NodePrepareResources(
            dra_v1beta1.NodePrepareResourcesRequest(
                claims=[
                    dra_v1beta1.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims
                ]
            ),
            timeout=self.call_timeout,
        )
        return {
            uid: PrepareResult(tuple(_prepared(d) for d in res.devices), res.error)
            for uid, res in rb.claims.items()
        }

    def node_unprepare_resources(
        self, claims: Sequence[ClaimRef], version: DRAVersion | None = None
    ) -> dict[str, str]:
        """NodeUnprepareResources; the result maps claim UID to its error ("" = done)."""
        version = version or self.registration.chosen_version
        if version == "v1":
            r1 = self._v1.NodeUnprepareResources(
                dra_v1.NodeUnprepareResourcesRequest(
                    claims=[
                        dra_v1.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims
                    ]
                ),
                timeout=self.call_timeout,
            )
            return {uid: res.error for uid, res in r1.claims.items()}
        rb = self._v1beta1.NodeUnprepareResources(
            dra_v1beta1.NodeUnprepareResourcesRequest(
                claims=[
                    dra_v1beta1.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims
                ]
            ),
            timeout=self.call_timeout,
        )
        return {uid: res.error for uid, res in rb.claims.items()}

    def watch_health(self, version: HealthVersion = "v1alpha1") -> HealthWatch:
        """Open a NodeWatchResources stream (closed with the client or by the caller)."""
        watch = HealthWatch(self._channel, version)
        self._watches.append(watch)
        return watch

    def close(self) -> None:
        for watch in self._watches:
            watch.close()
        self._channel.close()


class FakeDRAKubelet:
    """Watches ``registry_dir`` for DRA registration sockets and registers them.

    ``start()`` starts a background scanner (a directory poll every ``poll_interval``);
    ``stop()`` ends it and closes every plugin connection. ``stop()`` then ``start()`` is a
    kubelet restart: sockets still present are registered again. A socket nobody serves is
    retried every ``retry_interval``.
    """

    def __init__(
        self,
        registry_dir: Path | str,
        *,
        poll_interval: float = POLL_INTERVAL,
        call_timeout: float = 5.0,
        dial_timeout: float = 1.0,
        retry_interval: float = 0.1,
    ) -> None:
        self.registry_dir = Path(registry_dir).absolute()
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout
        self.dial_timeout = dial_timeout
        self.retry_interval = retry_interval
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # registration socket (path, inode) -> registration, for sockets being served
        self._active: dict[tuple[Path, int], DRARegistration] = {}
        self._handled: set[tuple[Path, int]] = set()
        self._clients: dict[str, DRAPluginClient] = {}
        self._registrations: list[DRARegistration] = []
        self._rejections: list[DRARejection] = []
        self._deregistrations: list[DRARegistration] = []
        self._last_dial_error: dict[Path, str] = {}
        self._retry_at: dict[tuple[Path, int], float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise KubeletFakeError("FakeDRAKubelet already started")
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="fake-kubelet-plugin-watcher")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=10)
        with self._cond:
            clients = list(self._clients.values())
            self._clients.clear()
            self._active.clear()
            self._handled.clear()
        for client in clients:
            client.close()

    def __enter__(self) -> FakeDRAKubelet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the plugin watcher ----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.scan_once()
            self._stop.wait(self.poll_interval)

    def scan_once(self) -> None:
        """One pass of the plugin watcher: register new sockets, deregister vanished ones."""
        present: set[tuple[Path, int]] = set()
        try:
            entries = list(os.scandir(self.registry_dir))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or not is_socket(path):
                continue
            key = (path, entry.inode())
            present.add(key)
            with self._cond:
                known = key in self._handled
            if not known and self._retry_at.get(key, 0.0) <= time.monotonic():
                self._try_register(path, key)
        to_close: list[DRAPluginClient] = []
        with self._cond:
            gone = [k for k in self._handled if k not in present]
            for key in gone:
                self._handled.discard(key)
                registration = self._active.pop(key, None)
                if registration is None:
                    continue
                self._deregistrations.append(registration)
                client = self._clients.get(registration.driver_name)
                if client is not None and client.registration == registration:
                    to_close.append(self._clients.pop(registration.driver_name))
            if gone:
                self._cond.notify_all()
        for client in to_close:
            client.close()

    def _try_register(self, socket_path: Path, key: tuple[Path, int]) -> None:
        channel = grpc.insecure_channel(unix_target(socket_path))
        try:
            stub = reg_grpc.RegistrationStub(channel)
            try:
                # Fails fast (UNAVAILABLE) while nothing listens on the socket.
                info = stub.GetInfo(reg_pb2.InfoRequest(), timeout=self.dial_timeout)
            except grpc.RpcError as exc:
                # Not served yet, or a stale socket: the kubelet retries later, so do we.
                self._last_dial_error[socket_path] = describe_rpc_error(exc)
                self._retry_at[key] = time.monotonic() + self.retry_interval
                return
            endpoint = info.endpoint or str(socket_path)
            versions = tuple(info.supported_versions)
            error: str | None = None
            chosen: DRAVersion | str = ""
            replaced: DRAPluginClient | None = None
            if info.type != PLUGIN_TYPE:
                error = (
                    f"RegisterPlugin error -- no handler registered for plugin type: "
                    f"{info.type} at socket {socket_path}"
                )
            else:
                chosen = choose_service(versions)
                if chosen not in ("v1", "v1beta1"):
                    error = (
                        "RegisterPlugin error -- plugin validation failed with err: invalid "
                        f"supported gRPC versions of DRA driver plugin {info.name} at endpoint "
                        f"{endpoint}: {chosen}"
                    )
            try:
                stub.NotifyRegistrationStatus(
                    reg_pb2.RegistrationStatus(plugin_registered=error is None, error=error or ""),
                    timeout=self.call_timeout,
                )
            except grpc.RpcError as exc:
                self._last_dial_error[socket_path] = describe_rpc_error(exc)
                return
            with self._cond:
                self._handled.add(key)
                if error is not None:
                    self._rejections.append(DRARejection(socket_path, info.type, info.name, error))
                else:
                    registration = DRARegistration(
                        info.name,
                        endpoint,
                        versions,
                        socket_path,
                        "v1" if chosen == "v1" else "v1beta1",
                    )
                    self._registrations.append(registration)
                    self._active[key] = registration
                    replaced = self._clients.get(info.name)
                    self._clients[info.name] = DRAPluginClient(registration, self.call_timeout)
                self._cond.notify_all()
            if replaced is not None:
                replaced.close()
        finally:
            channel.close()

    # -- observations and waits ------------------------------------------------------------

    @property
    def registrations(self) -> list[DRARegistration]:
        with self._cond:
            return list(self._registrations)

    @property
    def rejections(self) -> list[DRARejection]:
        with self._cond:
            return list(self._rejections)

    @property
    def deregistrations(self) -> list[DRARegistration]:
        with self._cond:
            return list(self._deregistrations)

    def wait_for_registration(
        self, driver_name: str | None = None, timeout: float = 5.0, *, count: int = 1
    ) -> DRARegistration:
        """Wait until ``count`` registrations (of ``driver_name``) happened; return the last."""

        def check() -> DRARegistration | None:
            regs = [r for r in self._registrations if driver_name in (None, r.driver_name)]
            return regs[-1] if len(regs) >= count else None

        return wait_on(
            self._cond,
            check,
            timeout,
            lambda: (
                f"DRA registration #{count} of {driver_name or 'any driver'} in "
                f"{self.registry_dir}; rejected {self._rejections}; "
                f"last dial errors {self._last_dial_error}"
            ),
        )

    def wait_for_rejection(self, timeout: float = 5.0) -> DRARejection:
        return wait_on(
            self._cond,
            lambda: self._rejections[-1] if self._rejections else None,
            timeout,
            lambda: f"a rejected DRA registration in {self.registry_dir}",
        )

    def wait_for_deregistration(
        self, driver_name: str | None = None, timeout: float = 5.0
    ) -> DRARegistration:
        def check() -> DRARegistration | None:
            for reg in reversed(self._deregistrations):
                if driver_name in (None, reg.driver_name):
                    return reg
            return None

        return wait_on(
            self._cond,
            check,
            timeout,
            lambda: f"deregistration of {driver_name or 'any driver'}",
        )

    # -- calls into the plugin -------------------------------------------------------------

    def client(self, driver_name: str | None = None) -> DRAPluginClient:
        """The connection to ``driver_name``'s endpoint (or the only registered driver)."""
        with self._cond:
            if driver_name is None:
                if len(self._clients) != 1:
                    raise KubeletFakeError(
                        f"name the driver: registered drivers are {sorted(self._clients)}"
                    )
                return next(iter(self._clients.values()))
            client = self._clients.get(driver_name)
        if client is None:
            raise KubeletFakeError(
                f"DRA driver {driver_name} is not registered; registered: {sorted(self._clients)}"
            )
        return client

    def node_prepare_resources(
        self,
        claims: Sequence[ClaimRef],
        version: DRAVersion | None = None,
        *,
        driver_name: str | None = None,
    ) -> dict[str, PrepareResult]:
        return self.client(driver_name).node_prepare_resources(claims, version)

    def node_unprepare_resources(
        self,
        claims: Sequence[ClaimRef],
        version: DRAVersion | None = None,
        *,
        driver_name: str | None = None,
    ) -> dict[str, str]:
        return self.client(driver_name).node_unprepare_resources(claims, version)

    def watch_health(
        self, version: HealthVersion = "v1alpha1", *, driver_name: str | None = None
    ) -> HealthWatch:
        return self.client(driver_name).watch_health(version)
