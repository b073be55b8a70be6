"""Tiny in-test plugins (real gRPC on unix sockets) that exercise the fake kubelet."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from qpu_k8s.fakekubelet.common import UnixGrpcServer, unix_target, wait_on
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2 as dp
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from qpu_k8s.proto.dra.v1 import api_pb2 as dra_v1
from qpu_k8s.proto.dra.v1 import api_pb2_grpc as dra_v1_grpc
from qpu_k8s.proto.dra.v1beta1 import api_pb2 as dra_v1beta1
from qpu_k8s.proto.dra.v1beta1 import api_pb2_grpc as dra_v1beta1_grpc
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2 as health
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2_grpc as health_grpc
from qpu_k8s.proto.pluginregistration.v1 import api_pb2 as reg
from qpu_k8s.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from testsupport.names import DRIVER, RESOURCE


class _Versioned:
    """State plus a change counter that streaming handlers wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0

    def bump(self) -> None:
        with self.cond:
            self.version += 1
            self.cond.notify_all()

    def stream(self, context: grpc.ServicerContext) -> Iterator[int]:
        """Yield once now and once per change, until the RPC ends (no polling)."""
        ended = threading.Event()

        def on_end() -> None:
            ended.set()
            self.bump()

        context.add_callback(on_end)
        seen = -1

        def changed_or_ended() -> bool:
            return self.version != seen or ended.is_set()

        while True:
            with self.cond:
                self.cond.wait_for(changed_or_ended)
                if ended.is_set():
                    return
                seen = self.version
            yield seen


class TinyDevicePlugin(dp_grpc.DevicePluginServicer):
    """A device plugin with settable devices; records what the kubelet asked."""

    def __init__(self, plugin_dir: Path, endpoint: str = "tiny.sock") -> None:
        self.plugin_dir = plugin_dir
        self.endpoint = endpoint
        self.devices: dict[str, str] = {"qpu-0": "Healthy", "qpu-1": "Healthy"}
        self.prestarted: list[list[str]] = []
        self.streams_ended = 0
        self._changes = _Versioned()
        self._server = UnixGrpcServer(
            plugin_dir / endpoint, lambda s: dp_grpc.add_DevicePluginServicer_to_server(self, s)
        )

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def register(self, version: str = "v1beta1", resource: str = RESOURCE) -> None:
        with grpc.insecure_channel(unix_target(self.plugin_dir / "kubelet.sock")) as channel:
            dp_grpc.RegistrationStub(channel).Register(
                dp.RegisterRequest(
                    version=version,
                    endpoint=self.endpoint,
                    resource_name=resource,
                    options=dp.DevicePluginOptions(
                        pre_start_required=True, get_preferred_allocation_available=True
                    ),
                ),
                timeout=10,
            )

    def set_health(self, device_id: str, health_value: str) -> None:
        with self._changes.cond:
            self.devices[device_id] = health_value
        self._changes.bump()

    def wait_stream_ended(self, timeout: float = 5.0) -> None:
        wait_on(
            self._changes.cond,
            lambda: True if self.streams_ended else None,
            timeout,
            lambda: "the kubelet to close ListAndWatch",
        )

    def GetDevicePluginOptions(
        self, request: dp.Empty, context: grpc.ServicerContext
    ) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )

    def ListAndWatch(
        self, request: dp.Empty, context: grpc.ServicerContext
    ) -> Iterator[dp.ListAndWatchResponse]:
        for _ in self._changes.stream(context):
            with self._changes.cond:
                devices = [
                    dp.Device(
                        ID=i,
                        health=h,
                        topology=dp.TopologyInfo(nodes=[dp.NUMANode(ID=0)]),
                    )
                    for i, h in sorted(self.devices.items())
                ]
            yield dp.ListAndWatchResponse(devices=devices)
        with self._changes.cond:
            self.streams_ended += 1
            self._changes.cond.notify_all()

    def GetPreferredAllocation(
        self, request: dp.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> dp.PreferredAllocationResponse:
        answers = []
        for req in request.container_requests:
            chosen = list(req.must_include_deviceIDs)
            chosen += [d for d in reversed(req.available_deviceIDs) if d not in chosen]
            answers.append(
                dp.ContainerPreferredAllocationResponse(deviceIDs=chosen[: req.allocation_size])
            )
        return dp.PreferredAllocationResponse(container_responses=answers)

    def Allocate(
        self, request: dp.AllocateRequest, context: grpc.ServicerContext
    ) -> dp.AllocateResponse:
        return dp.AllocateResponse(
            container_responses=[
                dp.ContainerAllocateResponse(
                    envs={"QRMI_JOB_QPU_RESOURCES": ",".join(r.devices_ids)},
                    cdi_devices=[
                        dp.CDIDevice(name=f"quantum.example.com/qpu={d}") for d in r.devices_ids
                    ],
                )
                for r in request.container_requests
            ]
        )

    def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> dp.PreStartContainerResponse:
        self.prestarted.append(list(request.devices_ids))
        return dp.PreStartContainerResponse()


@dataclass
class TinyDRAPlugin:
    """Registration server + DRA v1/v1beta1 + health v1alpha1 on real sockets."""

    registry_dir: Path
    plugins_dir: Path
    plugin_type: str = "DRAPlugin"
    versions: tuple[str, ...] = ("v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth")
    reg_name: str = f"{DRIVER}-reg.sock"
    calls: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (svc, rpc, uids)
    statuses: list[tuple[bool, str]] = field(default_factory=list)
    health: dict[str, int] = field(default_factory=lambda: {"qpu-0": health.HEALTHY})

    def __post_init__(self) -> None:
        self.changes = _Versioned()
        self.endpoint = self.plugins_dir / DRIVER / "dra.sock"
        self._dra = UnixGrpcServer(self.endpoint, self._add_dra)
        self._reg = UnixGrpcServer(self.registry_dir / self.reg_name, self._add_reg)

    def _add_dra(self, server: grpc.Server) -> None:
        dra_v1_grpc.add_DRAPluginServicer_to_server(_DRAv1(self), server)
        dra_v1beta1_grpc.add_DRAPluginServicer_to_server(_DRAv1beta1(self), server)
        health_grpc.add_DRAResourceHealthServicer_to_server(_Health(self), server)

    def _add_reg(self, server: grpc.Server) -> None:
        reg_grpc.add_RegistrationServicer_to_server(_Reg(self), server)

    def start(self) -> None:
        self._dra.start()  # serve the endpoint before announcing it
        self._reg.start()

    def stop(self) -> None:
        self._reg.stop()
        self._dra.stop()

    def remove_registration_socket(self) -> None:
        self._reg.stop()

    def wait_status(self, timeout: float = 5.0) -> tuple[bool, str]:
        return wait_on(
            self.changes.cond,
            lambda: self.statuses[-1] if self.statuses else None,
            timeout,
            lambda: "NotifyRegistrationStatus",
        )

    def record(self, service: str, rpc: str, uids: list[str]) -> None:
        with self.changes.cond:
            self.calls.append((service, rpc, uids))

    def set_health(self, device: str, value: int) -> None:
        with self.changes.cond:
            self.health[device] = value
        self.changes.bump()


class _Reg(reg_grpc.RegistrationServicer):
    def __init__(self, plugin: TinyDRAPlugin) -> None:
        self.p = plugin

    def GetInfo(self, request: reg.InfoRequest, context: grpc.ServicerContext) -> reg.PluginInfo:
        return reg.PluginInfo(
            type=self.p.plugin_type,
            name=DRIVER,
            endpoint=str(self.p.endpoint),
            supported_versions=list(self.p.versions),
        )

    def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        with self.p.changes.cond:
            self.p.statuses.append((request.plugin_registered, request.error))
        self.p.changes.bump()
        return reg.RegistrationStatusResponse()


class _DRAv1(dra_v1_grpc.DRAPluginServicer):
    def __init__(self, plugin: TinyDRAPlugin) -> None:
        self.p = plugin

    def NodePrepareResources(
        self, request: dra_v1.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1.NodePrepareResourcesResponse:
        self.p.record("v1", "prepare", [c.uid for c in request.claims])
        out = dra_v1.NodePrepareResourcesResponse()
        for c in request.claims:
            out.claims[c.uid].devices.append(
                dra_v1.Device(
                    request_names=["qpu"],
                    pool_name="node-a",
                    device_name="qpu-0",
                    cdi_device_ids=[f"{DRIVER}/claim={c.uid}"],
                    share_id="share-1",
                )
            )
        return out

    def NodeUnprepareResources(
        self, request: dra_v1.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1.NodeUnprepareResourcesResponse:
        self.p.record("v1", "unprepare", [c.uid for c in request.claims])
        out = dra_v1.NodeUnprepareResourcesResponse()
        for c in request.claims:
            out.claims[c.uid].error = "" if c.name else "claim name missing"
        return out


class _DRAv1beta1(dra_v1beta1_grpc.DRAPluginServicer):
    def __init__(self, plugin: TinyDRAPlugin) -> None:
        self.p = plugin

    def NodePrepareResources(
        self, request: dra_v1beta1.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1beta1.NodePrepareResourcesResponse:
        self.p.record("v1beta1", "prepare", [c.uid for c in request.claims])
        out = dra_v1beta1.NodePrepareResourcesResponse()
        for c in request.claims:
            if c.uid == "bad":
                out.claims[c.uid].error = "no such claim"
                continue
            out.claims[c.uid].devices.append(
                dra_v1beta1.Device(
                    request_names=["qpu"],
                    pool_name="node-a",
                    device_name="qpu-1",
                    cdi_device_ids=[f"{DRIVER}/claim={c.uid}"],
                )
            )
        return out

    def NodeUnprepareResources(
        self, request: dra_v1beta1.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1beta1.NodeUnprepareResourcesResponse:
        self.p.record("v1beta1", "unprepare", [c.uid for c in request.claims])
        out = dra_v1beta1.NodeUnprepareResourcesResponse()
        for c in request.claims:
            out.claims[c.uid].error = ""
        return out


class _Health(health_grpc.DRAResourceHealthServicer):
    def __init__(self, plugin: TinyDRAPlugin) -> None:
        self.p = plugin

    def NodeWatchResources(
        self, request: health.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[health.NodeWatchResourcesResponse]:
        for _ in self.p.changes.stream(context):
            with self.p.changes.cond:
                devices = [
                    health.DeviceHealth(
                        device=health.DeviceIdentifier(pool_name="node-a", device_name=name),
                        health=value,  # type: ignore[arg-type]
                        last_updated_time=1_700_000_000,
                        message="probe ok" if value == health.HEALTHY else "probe failed",
                    )
                    for name, value in sorted(self.p.health.items())
                ]
            yield health.NodeWatchResourcesResponse(devices=devices)
