"""Device health: what the slices show and what the kubelet's health stream reports.

Two consumers, two mechanisms:

* **Scheduling** (ResourceSlices). ``withdraw`` (default) leaves an unhealthy backend's
  devices out of the slice, which every DRA version honours; ``taint`` keeps them with a
  ``NoSchedule`` DeviceTaint ``qpu.quantum.example.com/unhealthy=<status>``, which shows the
  reason but only works where the alpha/beta ``DRADeviceTaints`` feature is on (1.33+; a
  1.32 v1beta1 slice cannot even carry taints, and with the gate off the apiserver drops
  the field, leaving the device allocatable). Either way a claim already prepared keeps
  its acquisition: health gates new allocations only.
* **Pods already running** (``NodeWatchResources``, ``v1alpha1`` since 1.34 and ``v1``):
  the full list of our devices first, then again after every change, so the kubelet can
  put the health into the pod status of pods using them. All configured devices are
  listed, withdrawn ones included, since those are the ones a running pod may hold.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import grpc

from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.node.versioned import Versioned
from qpu_k8s.proto.dra_health.v1 import api_pb2 as h_v1
from qpu_k8s.proto.dra_health.v1 import api_pb2_grpc as h_v1_grpc
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2 as h_v1a1
from qpu_k8s.proto.dra_health.v1alpha1 import api_pb2_grpc as h_v1a1_grpc
from qpu_k8s.resourceslices.slices import DeviceTaint

# The kubelet marks a device's health stale after this long without an update (1.35+).
HEALTH_TIMEOUT_SECONDS = 0  # 0: the kubelet's default
MESSAGE_MAX = 1024


class UnhealthyMode(StrEnum):
    WITHDRAW = "withdraw"
    TAINT = "taint"


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


def unhealthy_taint(driver: str, status: str) -> DeviceTaint:
    """The taint an unhealthy device carries in ``taint`` mode (value: the probe status)."""
    value = "".join(c if c.isalnum() or c in "-_." else "-" for c in status)[:63].strip("-_.")
    return DeviceTaint(f"{driver}/unhealthy", value or "unknown", "NoSchedule")


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
