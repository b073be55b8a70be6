"""Fake kubelet, device-plugin side: the registration server and a client per plugin.

It behaves like a current kubelet's device manager, over real gRPC on real unix sockets:
``Register`` checks the version and resource name, dials ``<dir>/<endpoint>`` and calls
``GetDevicePluginOptions`` before it answers (so a plugin must serve first), then consumes
``ListAndWatch`` in the background. ``restart()`` wipes the directory like a kubelet start.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from qpu_k8s.fakekubelet.common import (
    KubeletFakeError,
    UnixGrpcServer,
    describe_rpc_error,
    rpc_code,
    unix_target,
    wait_on,
)
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
# The device manager keeps its checkpoint in the same directory and spares it when wiping.
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def is_extended_resource_name(name: str) -> bool:
    """The kubelet's rule: ``domain/name``, not in ``kubernetes.io``, valid as a quota name."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    parts = f"requests.{name}".split("/")
    if len(parts) != 2:
        return False
    prefix, short = parts
    return (
        len(prefix) <= 253
        and _DNS_SUBDOMAIN.fullmatch(prefix) is not None
        and len(short) <= 63
        and _QUALIFIED_NAME.fullmatch(short) is not None
    )


@dataclass(frozen=True)
class PluginOptions:
    pre_start_required: bool = False
    get_preferred_allocation_available: bool = False

    @classmethod
    def from_proto(cls, msg: api_pb2.DevicePluginOptions) -> PluginOptions:
        return cls(msg.pre_start_required, msg.get_preferred_allocation_available)


@dataclass(frozen=True)
class Registration:
    """One accepted ``Register`` call; ``generation`` counts kubelet (re)starts from 1."""

    resource_name: str
    endpoint: str
    version: str
    options: PluginOptions
    generation: int


@dataclass(frozen=True)
class Rejection:
    """One refused ``Register`` call and the error the plugin received."""

    resource_name: str
    endpoint: str
    version: str
    message: str


@dataclass(frozen=True)
class DeviceState:
    id: str
    health: str
    numa_nodes: tuple[int, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


class _PluginConnection:
    """The kubelet's client of one registered plugin: channel, options, ListAndWatch thread."""

    def __init__(self, resource: str, socket_path: Path, owner: FakeDevicePluginKubelet) -> None:
        self.resource = resource
        self.socket_path = socket_path
        self.channel = grpc.insecure_channel(unix_target(socket_path))
        self.stub = api_pb2_grpc.DevicePluginStub(self.channel)
        self.options = PluginOptions()
        self.devices: list[DeviceState] | None = None  # None until the first list arrives
        self.updates = 0
        self.stream_ended = False
        self.stream_error: str | None = None
        self._owner = owner
        self._call: grpc.Call | None = None
        self._thread: threading.Thread | None = None

    def connect(self, timeout: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        self.options = PluginOptions.from_proto(
            self.stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=timeout)
        )

    def start_watch(self) -> None:
        call = self.stub.ListAndWatch(api_pb2.Empty())
        self._call = call
        self._thread = threading.Thread(
            target=self._consume, args=(call,), name=f"fake-kubelet-law-{self.resource}"
        )
        self._thread.daemon = True
        self._thread.start()

    def _consume(self, responses: Iterable[api_pb2.ListAndWatchResponse]) -> None:
        error: str | None = None
        try:
            for response in responses:
                devices = [
                    DeviceState(d.ID, d.health, tuple(n.ID for n in d.topology.nodes))
                    for d in response.devices
                ]
                self._owner._on_devices(self, devices)
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.CANCELLED:
                error = describe_rpc_error(exc)
        self._owner._on_stream_end(self, error)

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.channel.close()


class FakeDevicePluginKubelet:
    """Serves ``/v1beta1.Registration/Register`` on ``<device_plugin_dir>/kubelet.sock``.

    Use as a context manager or call ``start()``/``stop()``. All waits are condition waits
    with a deadline; state is safe to read from any thread.
    """

    def __init__(
        self, device_plugin_dir: Path | str, *, dial_timeout: float = 5.0, call_timeout: float = 5.0
    ) -> None:
        self.device_plugin_dir = Path(device_plugin_dir).absolute()
        self.dial_timeout = dial_timeout
        self.call_timeout = call_timeout
        self._cond = threading.Condition()
        self._generation = 0
        self._registrations: list[Registration] = []
        self._rejections: list[Rejection] = []
        self._plugins: dict[str, _PluginConnection] = {}
        self._server = UnixGrpcServer(self.socket_path, self._add_services)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.device_plugin_dir / KUBELET_SOCKET

    @property
    def generation(self) -> int:
        """1 after the first ``start()``, +1 for every ``restart()``."""
        with self._cond:
            return self._generation

    def start(self) -> None:
        self.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        with self._cond:
            self._generation += 1
        self._server.start()

    def stop(self, *, remove_socket: bool = True) -> None:
        """Stop like a clean kubelet exit: streams cancelled, kubelet.sock removed.

        ``remove_socket=False`` leaves a socket file nobody listens on, as a crashed kubelet
        does (gRPC removes its own socket on shutdown, so a dead one is bound in its place).
        """
        self._server.stop()
        self._disconnect_all()
        if not remove_socket and not self.socket_path.exists():
            with socket.socket(socket.AF_UNIX) as dead:
                dead.bind(str(self.socket_path))

    def restart(self) -> None:
        """Simulate a kubelet restart: stop, remove every file in the directory (sockets
        included; sub-directories and the device checkpoint stay), then serve a new
        kubelet.sock. Plugins must notice and register again."""
        self.stop()
        self.wipe_directory()
        self.start()

    def wipe_directory(self) -> list[Path]:
        """What the kubelet's device manager does at start; returns the removed paths."""
        removed = []
        for entry in sorted(self.device_plugin_dir.iterdir()):
            if entry.name == CHECKPOINT_FILE or (entry.is_dir() and not entry.is_symlink()):
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
        return removed

    def __enter__(self) -> FakeDevicePluginKubelet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _disconnect_all(self) -> None:
        with self._cond:
            plugins = list(self._plugins.values())
            self._plugins.clear()
            self._cond.notify_all()
        for plugin in plugins:
            plugin.close()

    # -- the Registration service ----------------------------------------------------------

    def _add_services(self, server: grpc.Server) -> None:
        api_pb2_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)

    def _register(self, request: api_pb2.RegisterRequest) -> str | None:
        """Handle one Register; returns the error message for the plugin, or None."""
        if request.version != API_VERSION:
            return (
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["{API_VERSION}"]'
            )
        if not is_extended_resource_name(request.resource_name):
            return f'the ResourceName "{request.resource_name}" is invalid'
        plugin = _PluginConnection(
            request.resource_name, self.device_plugin_dir / request.endpoint, self
        )
        try:
            plugin.connect(self.dial_timeout)
        except (grpc.FutureTimeoutError, grpc.RpcError) as exc:
            plugin.close()
            return f"failed to dial device plugin: {describe_rpc_error(exc)}"
        with self._cond:
            previous = self._plugins.get(request.resource_name)
            self._plugins[request.resource_name] = plugin
            self._registrations.append(
                Registration(
                    request.resource_name,
                    request.endpoint,
                    request.version,
                    PluginOptions.from_proto(request.options),
                    self._generation,
                )
            )
            self._cond.notify_all()
        if previous is not None:
            previous.close()  # a re-registration replaces the old endpoint
        plugin.start_watch()
        return None

    def _reject(self, request: api_pb2.RegisterRequest, message: str) -> None:
        with self._cond:
            self._rejections.append(
                Rejection(request.resource_name, request.endpoint, request.version, message)
            )
            self._cond.notify_all()

    def _on_devices(self, plugin: _PluginConnection, devices: list[DeviceState]) -> None:
        with self._cond:
            plugin.devices = devices
            plugin.updates += 1
            self._cond.notify_all()

    def _on_stream_end(self, plugin: _PluginConnection, error: str | None) -> None:
        with self._cond:
            plugin.stream_ended = True
            plugin.stream_error = error
            self._cond.notify_all()

    # -- observations and waits ------------------------------------------------------------

    @property
    def registrations(self) -> list[Registration]:
        """Every accepted Register since construction, oldest first (all generations)."""
        with self._cond:
            return list(self._registrations)

    @property
    def rejections(self) -> list[Rejection]:
        with self._cond:
            return list(self._rejections)

    def devices(self, resource_name: str) -> list[DeviceState]:
        """Latest list from the plugin's ListAndWatch (empty before the first one)."""
        with self._cond:
            plugin = self._plugins.get(resource_name)
            return list(plugin.devices or []) if plugin else []

    def options(self, resource_name: str) -> PluginOptions:
        """What GetDevicePluginOptions answered at registration."""
        return self._plugin(resource_name).options

    def list_and_watch_updates(self, resource_name: str) -> int:
        with self._cond:
            plugin = self._plugins.get(resource_name)
            return plugin.updates if plugin else 0

    def stream_ended(self, resource_name: str) -> bool:
        """True once the current plugin's ListAndWatch stream has closed."""
        with self._cond:
            plugin = self._plugins.get(resource_name)
            return plugin.stream_ended if plugin else False

    def wait_for_registration(
        self,
        timeout: float = 5.0,
        *,
        resource_name: str | None = None,
        generation: int | None = None,
    ) -> Registration:
        """Wait for a registration in the current generation (default) and return the latest."""

        def check() -> Registration | None:
            wanted = self._generation if generation is None else generation
            for reg in reversed(self._registrations):
                if reg.generation == wanted and resource_name in (None, reg.resource_name):
                    return reg
            return None

        return wait_on(
            self._cond,
            check,
            timeout,
            lambda: (
                f"a device plugin registration ({resource_name or 'any resource'}) "
                f"in kubelet generation {self._generation}; seen {self._registrations}, "
                f"rejected {self._rejections}"
            ),
        )

    def wait_for_rejection(self, timeout: float = 5.0) -> Rejection:
        return wait_on(
            self._cond,
            lambda: self._rejections[-1] if self._rejections else None,
            timeout,
            lambda: "a rejected registration",
        )

    def wait_for_devices(
        self,
        resource_name: str,
        predicate: Callable[[list[DeviceState]], bool] = bool,
        timeout: float = 5.0,
    ) -> list[DeviceState]:
        """Wait until the latest ListAndWatch list satisfies ``predicate`` (default: non-empty)."""

        def check() -> list[DeviceState] | None:
            plugin = self._plugins.get(resource_name)
            if plugin is None or plugin.devices is None:
                return None
            return list(plugin.devices) if predicate(list(plugin.devices)) else None

        return wait_on(
            self._cond,
            check,
            timeout,
            lambda: (
                f"devices of {resource_name} to match {predicate!r}; "
                f"latest: {self.devices(resource_name) if resource_name in self._plugins else None}"
            ),
        )

    def wait_for_stream_end(self, resource_name: str, timeout: float = 5.0) -> str | None:
        """Wait until the plugin closes ListAndWatch; returns the error text, None if clean."""

        def check() -> tuple[str | None] | None:
            plugin = self._plugins.get(resource_name)
            return (plugin.stream_error,) if plugin and plugin.stream_ended else None

        return wait_on(self._cond, check, timeout, lambda: f"end of {resource_name} ListAndWatch")[
            0
        ]

    # -- calls into the plugin, as the kubelet makes them ----------------------------------

    def _plugin(self, resource_name: str) -> _PluginConnection:
        with self._cond:
            plugin = self._plugins.get(resource_name)
        if plugin is None:
            raise KubeletFakeError(
                f"no device plugin registered for {resource_name!r}; "
                f"registered: {sorted(self._plugins)}"
            )
        return plugin

    def allocate(
        self,
        resource_name: str,
        device_ids_per_container: Sequence[Sequence[str]],
        *,
        only_healthy: bool = True,
    ) -> api_pb2.AllocateResponse:
        """``Allocate`` with one ContainerAllocateRequest per inner sequence.

        Like the kubelet, refuses (before calling) device IDs the plugin has not advertised
        as healthy; pass ``only_healthy=False`` to test the plugin's own checks.
        """
        plugin = self._plugin(resource_name)
        if only_healthy:
            healthy = {d.id for d in self.devices(resource_name) if d.healthy}
            unknown = sorted({i for ids in device_ids_per_container for i in ids} - healthy)
            if unknown:
                raise KubeletFakeError(
                    f"devices {unknown} of {resource_name} are not advertised as healthy; "
                    f"healthy: {sorted(healthy)}"
                )
        request = api_pb2.AllocateRequest(
            container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=list(ids))
                for ids in device_ids_per_container
            ]
        )
        return plugin.stub.Allocate(request, timeout=self.call_timeout)

    def get_preferred_allocation(
        self,
        resource_name: str,
        available: Sequence[str],
        size: int,
        must_include: Sequence[str] = (),
    ) -> list[str]:
        """``GetPreferredAllocation`` for one container, as the kubelet calls it."""
        plugin = self._plugin(resource_name)
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = plugin.stub.GetPreferredAllocation(request, timeout=self.call_timeout)
        if len(response.container_responses) != 1:
            raise KubeletFakeError(
                f"GetPreferredAllocation answered {len(response.container_responses)} "
                "container responses for 1 container request"
            )
        return list(response.container_responses[0].deviceIDs)

    def pre_start_container(self, resource_name: str, device_ids: Sequence[str]) -> None:
        plugin = self._plugin(resource_name)
        plugin.stub.PreStartContainer(
            api_pb2.PreStartContainerRequest(devices_ids=list(device_ids)),
            timeout=self.call_timeout,
        )


class _RegistrationServicer(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeDevicePluginKubelet) -> None:
        self._kubelet = kubelet

    def Register(
        self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> api_pb2.Empty:
        error = self._kubelet._register(request)
        if error is not None:
            self._kubelet._reject(request, error)
            # A Go error returned from a handler reaches the client as status UNKNOWN.
            context.abort(grpc.StatusCode.UNKNOWN, error)
        return api_pb2.Empty()
