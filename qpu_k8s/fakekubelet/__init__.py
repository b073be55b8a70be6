"""The in-repo fake kubelet: real gRPC servers and clients on real unix sockets.

One import for tests, benchmarks and the demo; each part lives in its own module:

- ``FakeDevicePluginKubelet`` (kubelet_deviceplugin): device-plugin registration server,
  ListAndWatch consumer, Allocate/GetPreferredAllocation/PreStartContainer caller, restart.
- ``FakePodResourcesServer`` (kubelet_podresources): the PodResources v1 endpoint.
- ``FakeDRAKubelet`` (kubelet_dra): plugin-registration watcher and DRA v1/v1beta1 client
  with the DRA health stream.
"""

from qpu_k8s.fakekubelet.common import KubeletFakeError, unix_target
from qpu_k8s.fakekubelet.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceState,
    FakeDevicePluginKubelet,
    PluginOptions,
    Registration,
    Rejection,
    is_extended_resource_name,
)
from qpu_k8s.fakekubelet.dra import (
    AnsweredDevice,
    ClaimRef,
    DeviceHealthState,
    DRAPluginClient,
    DRARegistration,
    DRARejection,
    FakeDRAKubelet,
    HealthWatch,
    PrepareResult,
)
from qpu_k8s.fakekubelet.podresources import (
    ClaimAllocation,
    ClaimDevice,
    ContainerAllocation,
    DeviceAllocation,
    FakePodResourcesServer,
    PodAllocation,
)

__all__ = [
    "HEALTHY",
    "UNHEALTHY",
    "AnsweredDevice",
    "ClaimAllocation",
    "ClaimDevice",
    "ClaimRef",
    "ContainerAllocation",
    "DRAPluginClient",
    "DRARegistration",
    "DRARejection",
    "DeviceAllocation",
    "DeviceHealthState",
    "DeviceState",
    "FakeDRAKubelet",
    "FakeDevicePluginKubelet",
    "FakePodResourcesServer",
    "HealthWatch",
    "KubeletFakeError",
    "PluginOptions",
    "PodAllocation",
    "PrepareResult",
    "Registration",
    "Rejection",
    "is_extended_resource_name",
    "unix_target",
]
