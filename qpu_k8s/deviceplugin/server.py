"""The ``v1beta1.DevicePlugin`` gRPC service the kubelet calls.

Options we advertise (GetDevicePluginOptions, also sent in Register):

* ``get_preferred_allocation_available = true``: the kubelet otherwise picks lanes
  arbitrarily; we spread a container's devices over distinct backends, least-loaded first
  (see :meth:`DeviceBoard.preferred`).
* ``pre_start_required = false``: everything happens in Allocate (acquire + env); a
  PreStartContainer hook would add a blocking call to every container (re)start and has
  nothing to do. It is still answered (empty) for kubelets that call it anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

import grpc

from qpu_k8s.deviceplugin.allocator import AllocateError, Allocator
from qpu_k8s.deviceplugin.devices import Device, DeviceBoard
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

# The gRPC status the kubelet sees for each reason Allocate fails (AllocateError.kind).
STATUS_OF = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_device": grpc.StatusCode.FAILED_PRECONDITION,
    "config": grpc.StatusCode.FAILED_PRECONDITION,
    "timeout": grpc.StatusCode.UNAVAILABLE,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "auth": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
}

OPTIONS = api_pb2.DevicePluginOptions(
    pre_start_required=False, get_preferred_allocation_available=True
)


def list_response(devices: Iterable[Device]) -> api_pb2.ListAndWatchResponse:
    return api_pb2.ListAndWatchResponse(
        devices=[api_pb2.Device(ID=d.id, health=d.health) for d in devices]
    )


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """One instance per served socket; ``stop()`` ends its ListAndWatch streams."""

    def __init__(
        self,
        board: DeviceBoard,
        allocator: Allocator,
    ) -> None:
        self.board = board
        self.allocator = allocator
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.board.devices.wake()

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return OPTIONS

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        done = threading.Event()

        def gone() -> None:
            done.set()
            self.board.devices.wake()

        context.add_callback(gone)
        version, devices = self.board.devices.current()
        log.info("ListAndWatch opened", extra={"devices": len(devices), "version": version})
        yield list_response(devices)
        while True:
            update = self.board.devices.wait_newer(
                version, stop=lambda: done.is_set() or self._stopping.is_set()
            )
            if update is None:
                log.info("ListAndWatch closed")
                return
            version, devices = update
            yield list_response(devices)

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        return api_pb2.PreferredAllocationResponse(
            container_responses=[
                api_pb2.ContainerPreferredAllocationResponse(
                    deviceIDs=self.board.preferred(
                        list(r.available_deviceIDs),
                        list(r.must_include_deviceIDs),
                        r.allocation_size,
                    )
                )
                for r in request.container_requests
            ]
        )

    def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        try:
            envs = self.allocator.allocate(
                [list(r.devices_ids) for r in request.container_requests]
            )
        except AllocateError as err:
            context.abort(STATUS_OF.get(err.kind, grpc.StatusCode.UNAVAILABLE), err.message)
        return api_pb2.AllocateResponse(
            container_responses=[api_pb2.ContainerAllocateResponse(envs=e.env) for e in envs]
        )

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()
