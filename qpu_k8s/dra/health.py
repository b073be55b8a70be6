"""Device health for pods already running: the kubelet's DRA health stream.

``NodeWatchResources`` (``v1alpha1`` since 1.34, and ``v1``) sends the full list of our
devices first, then again after every change, so the kubelet can put the health into the
status of the pods using them. All configured devices are listed, withdrawn ones
included, since those are the ones a running pod may hold. (What happens to the slices of
an unhealthy backend is the publishing policy: :mod:`qpu_k8s.resourceslices.policy`.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

import grpc

from qpu_k8s.core.model import AccessMode
from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.node.registry import BackendState
from qpu_k8s.node.versioned import Versioned
from qpu_k8s.proto.dra_health.v1 import api_pb2 as h_v1
from qpu_k8s.proto.dra_health.v1 import api_pb2_grpc as h_v1_grpc
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2 as h_v1a1
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2_grpc as h_v1a1_grpc
from qpu_k8s.resourceslices.build import shared_pool_name

# The kubelet marks a device's health stale after this long without an update (1.35+).
HEALTH_TIMEOUT_SECONDS = 0  # 0: the kubelet's default
MESSAGE_MAX = 1024


class DeviceHealthStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True)
class DeviceHealth:
    pool: str
    device: str
    status: DeviceHealthStatus
    updated_at: int
    message: str = ""


def status_of(health: Health, error: str | None) -> DeviceHealthStatus:
    """Not probed yet is UNKNOWN; a config/credentials error or a failed probe is UNHEALTHY."""
    if error:
        return DeviceHealthStatus.UNHEALTHY
    if health.status == "unknown":
        return DeviceHealthStatus.UNKNOWN
    return DeviceHealthStatus.HEALTHY if health.healthy else DeviceHealthStatus.UNHEALTHY


def project(states: Mapping[str, BackendState], node_pool: str) -> tuple[DeviceHealth, ...]:
    """The health of every device of the node's backends (shared ones in their own pool)."""
    devices: list[DeviceHealth] = []
    for state in states.values():
        status = status_of(state.health, state.error)
        message = state.error or state.health.reason or state.health.status
        shared = state.backend.spec.access is AccessMode.SHARED
        pool = shared_pool_name(state.backend.name) if shared else node_pool
        devices += [
            DeviceHealth(pool, dev, status, int(state.health.checked_at), message)
            for dev in state.backend.device_ids()
        ]
    return tuple(sorted(devices, key=lambda d: (d.pool, d.device)))


def _same_health(a: tuple[DeviceHealth, ...], b: tuple[DeviceHealth, ...]) -> bool:
    """Equal but for the probe times: a probe that changes nothing wakes no stream."""

    def key(devices: tuple[DeviceHealth, ...]) -> set[tuple[str, str, str, str]]:
        return {(d.pool, d.device, d.status, d.message) for d in devices}

    return key(a) == key(b)


HealthBoard = Versioned[tuple[DeviceHealth, ...]]


def health_board() -> HealthBoard:
    """The node's device health list that every NodeWatchResources stream follows."""
    return Versioned((), same=_same_health)


def _stream_into(
    board: HealthBoard, context: grpc.ServicerContext
) -> Iterator[tuple[DeviceHealth, ...]]:
    active = threading.Event()
    active.set()
    context.add_callback(active.clear)
    yield from board.stream(active.is_set)


class HealthServiceV1Alpha1(h_v1a1_grpc.DRAResourceHealthServicer):
    def __init__(self, board: HealthBoard) -> None:
        self.board = board

    def NodeWatchResources(
        self, request: h_v1a1.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[h_v1a1.NodeWatchResourcesResponse]:
        for devices in _stream_into(self.board, context):
            yield h_v1a1.NodeWatchResourcesResponse(
                devices=[
                    h_v1a1.DeviceHealth(
                        device=h_v1a1.DeviceIdentifier(pool_name=d.pool, device_name=d.device),
                        health=d.status.value,
                        last_updated_time=d.updated_at,
                        health_check_timeout_seconds=HEALTH_TIMEOUT_SECONDS,
                        message=d.message[:MESSAGE_MAX],
                    )
                    for d in devices
                ]
            )


class HealthServiceV1(h_v1_grpc.DRAResourceHealthServicer):
    def __init__(self, board: HealthBoard) -> None:
        self.board = board

    def NodeWatchResources(
        self, request: h_v1.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[h_v1.NodeWatchResourcesResponse]:
        for devices in _stream_into(self.board, context):
            yield h_v1.NodeWatchResourcesResponse(
                devices=[
                    h_v1.DeviceHealth(
                        device=h_v1.DeviceIdentifier(pool_name=d.pool, device_name=d.device),
                        health=d.status.value,
                        last_updated_time=d.updated_at,
                        health_check_timeout_seconds=HEALTH_TIMEOUT_SECONDS,
                        message=d.message[:MESSAGE_MAX],
                    )
                    for d in devices
                ]
            )
