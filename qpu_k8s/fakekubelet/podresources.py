"""Fake kubelet PodResources endpoint: ``v1.PodResourcesLister`` answering what a test sets.

The device plugin finds finished pods through this API, so tests describe the live pods
with small typed records (``set_pods``) and can make the endpoint fail (``fail_with``) to
prove that an unavailable kubelet never causes a release.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from qpu_k8s.fakekubelet.common import UnixGrpcServer
from qpu_k8s.proto.podresources.v1 import api_pb2, api_pb2_grpc

# Where the kubelet serves it, under its root directory.


@dataclass(frozen=True)
class DeviceAllocation:
    """Device-plugin devices of one resource held by a container."""

    resource_name: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class ClaimDevice:
    """One DRA device behind a claim."""

    driver_name: str
    pool_name: str
    device_name: str
    cdi_devices: tuple[str, ...] = ()
    share_id: str | None = None


@dataclass(frozen=True)
class ClaimAllocation:
    """A DRA ResourceClaim used by a container, with its devices."""

    claim_name: str
    claim_namespace: str
    devices: tuple[ClaimDevice, ...] = ()


@dataclass(frozen=True)
class ContainerAllocation:
    name: str
    devices: tuple[DeviceAllocation, ...] = ()
    claims: tuple[ClaimAllocation, ...] = ()


@dataclass(frozen=True)
class PodAllocation:
    """A live pod as the kubelet reports it."""

    name: str
    namespace: str
    containers: tuple[ContainerAllocation, ...] = field(default_factory=tuple)

    @classmethod
    def with_devices(
        cls,
        name: str,
        namespace: str,
        resource_name: str,
        device_ids: Sequence[str],
        container: str = "main",
    ) -> PodAllocation:
        """Shorthand: one container holding ``device_ids`` of one resource."""
        return cls(
            name,
            namespace,
            (
                ContainerAllocation(
                    container, (DeviceAllocation(resource_name, tuple(device_ids)),)
                ),
            ),
        )

    def to_proto(self) -> api_pb2.PodResources:
        return api_pb2.PodResources(
            name=self.name,
            namespace=self.namespace,
            containers=[
                api_pb2.ContainerResources(
                    name=c.name,
                    devices=[
                        api_pb2.ContainerDevices(
                            resource_name=d.resource_name, device_ids=list(d.device_ids)
                        )
                        for d in c.devices
                    ],
                    dynamic_resources=[_claim_proto(claim) for claim in c.claims],
                )
                for c in self.containers
            ],
        )


def _claim_proto(claim: ClaimAllocation) -> api_pb2.DynamicResource:
    resources = []
    for dev in claim.devices:
        msg = api_pb2.ClaimResource(
            driver_name=dev.driver_name,
            pool_name=dev.pool_name,
            device_name=dev.device_name,
            cdi_devices=[api_pb2.CDIDevice(name=n) for n in dev.cdi_devices],
        )
        if dev.share_id is not None:
            msg.share_id = dev.share_id
        resources.append(msg)
    return api_pb2.DynamicResource(
        claim_name=claim.claim_name,
        claim_namespace=claim.claim_namespace,
        claim_resources=resources,
    )


class FakePodResourcesServer:
    """Serves ``/v1.PodResourcesLister/{List,GetAllocatableResources,Get}`` on ``socket_path``."""

    def __init__(self, socket_path: Path | str) -> None:
        self.socket_path = Path(socket_path).absolute()
        self._lock = threading.Lock()
        self._pods: list[PodAllocation] = []
        self._allocatable: dict[str, tuple[str, ...]] = {}
        self._failure: tuple[grpc.StatusCode, str] | None = None
        self._calls: Counter[str] = Counter()
        self._server = UnixGrpcServer(self.socket_path, self._add_services, workers=4)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakePodResourcesServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _add_services(self, server: grpc.Server) -> None:
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)

    # -- what the test controls ------------------------------------------------------------

    def set_pods(self, pods: Iterable[PodAllocation]) -> None:
        """Replace the set of live pods that List/Get report."""
        pods = list(pods)
        keys = [(p.namespace, p.name) for p in pods]
        if len(set(keys)) != len(keys):
            raise ValueError(f"set_pods: duplicate namespace/name in {keys}")
        with self._lock:
            self._pods = pods

    def set_allocatable(self, devices: Mapping[str, Sequence[str]]) -> None:
        """Device IDs per resource name that GetAllocatableResources reports."""
        with self._lock:
            self._allocatable = {name: tuple(ids) for name, ids in devices.items()}

    def fail_with(self, code: grpc.StatusCode | None, message: str = "injected failure") -> None:
        """Make every call fail with ``code`` until called again with None."""
        with self._lock:
            self._failure = None if code is None else (code, message)

    def calls(self, method: str) -> int:
        """How many times ``method`` ("List", "Get", "GetAllocatableResources") was called."""
        with self._lock:
            return self._calls[method]

    # -- answers ---------------------------------------------------------------------------

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._calls[method] += 1
            failure = self._failure
        if failure is not None:
            context.abort(*failure)

    def _list(self) -> api_pb2.ListPodResourcesResponse:
        with self._lock:
            pods = list(self._pods)
        return api_pb2.ListPodResourcesResponse(pod_resources=[p.to_proto() for p in pods])

    def _get(self, name: str, namespace: str) -> api_pb2.PodResources | None:
        with self._lock:
            for pod in self._pods:
                if (pod.name, pod.namespace) == (name, namespace):
                    return pod.to_proto()
        return None

    def _allocatable_response(self) -> api_pb2.AllocatableResourcesResponse:
        with self._lock:
            items = sorted(self._allocatable.items())
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=name, device_ids=list(ids))
                for name, ids in items
            ]
        )


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, fake: FakePodResourcesServer) -> None:
        self._fake = fake

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self._fake._enter("List", context)
        return self._fake._list()

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        self._fake._enter("GetAllocatableResources", context)
        return self._fake._allocatable_response()

    def Get(
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        self._fake._enter("Get", context)
        pod = self._fake._get(request.pod_name, request.pod_namespace)
        if pod is None:
            # The kubelet returns a plain Go error here, which arrives as UNKNOWN.
            context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
            )
        return api_pb2.GetPodResourcesResponse(pod_resources=pod)
