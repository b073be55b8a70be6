"""The fake PodResources endpoint answers, over real gRPC, what the test set."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from qpu_k8s.fakekubelet import (
    ClaimAllocation,
    ClaimDevice,
    ContainerAllocation,
    DeviceAllocation,
    FakePodResourcesServer,
    PodAllocation,
    unix_target,
)
from qpu_k8s.proto.podresources.v1 import api_pb2, api_pb2_grpc

RESOURCE = "quantum.example.com/qpu"


def _stub(path: Path) -> tuple[grpc.Channel, api_pb2_grpc.PodResourcesListerStub]:
    channel = grpc.insecure_channel(unix_target(path))
    return channel, api_pb2_grpc.PodResourcesListerStub(channel)


def test_list_get_and_allocatable_report_what_was_set(tmp_path: Path) -> None:
    sock = tmp_path / "pod-resources" / "kubelet.sock"
    dra_pod = PodAllocation(
        "dra-pod",
        "team-b",
        (
            ContainerAllocation(
                "main",
                claims=(
                    ClaimAllocation(
                        "qpu-claim",
                        "team-b",
                        (
                            ClaimDevice(
                                "qpu.quantum.example.com",
                                "node-a",
                                "qpu-0",
                                ("qpu.quantum.example.com/claim=uid-1",),
                                share_id="s1",
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
    with FakePodResourcesServer(sock) as server:
        channel, stub = _stub(sock)
        with channel:
            assert list(stub.List(api_pb2.ListPodResourcesRequest()).pod_resources) == []
            server.set_pods(
                [PodAllocation.with_devices("p1", "team-a", RESOURCE, ["qpu-0", "qpu-1"]), dra_pod]
            )
            server.set_allocatable({RESOURCE: ["qpu-0", "qpu-1", "qpu-2"]})

            pods = stub.List(api_pb2.ListPodResourcesRequest(), timeout=5).pod_resources
            assert [(p.namespace, p.name) for p in pods] == [
                ("team-a", "p1"),
                ("team-b", "dra-pod"),
            ]
            devices = pods[0].containers[0].devices[0]
            assert (devices.resource_name, list(devices.device_ids)) == (
                RESOURCE,
                ["qpu-0", "qpu-1"],
            )
            claim = pods[1].containers[0].dynamic_resources[0]
            assert (claim.claim_name, claim.claim_namespace) == ("qpu-claim", "team-b")
            res = claim.claim_resources[0]
            assert (res.driver_name, res.pool_name, res.device_name, res.share_id) == (
                "qpu.quantum.example.com",
                "node-a",
                "qpu-0",
                "s1",
            )
            assert [c.name for c in res.cdi_devices] == ["qpu.quantum.example.com/claim=uid-1"]

            got = stub.Get(api_pb2.GetPodResourcesRequest(pod_name="p1", pod_namespace="team-a"))
            assert got.pod_resources.name == "p1"
            with pytest.raises(grpc.RpcError, match="pod gone in namespace team-a not found"):
                stub.Get(api_pb2.GetPodResourcesRequest(pod_name="gone", pod_namespace="team-a"))

            alloc = stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest())
            assert [(d.resource_name, list(d.device_ids)) for d in alloc.devices] == [
                (RESOURCE, ["qpu-0", "qpu-1", "qpu-2"])
            ]
            assert server.calls("List") == 2
            assert server.calls("Get") == 2

            server.set_pods([])
            assert list(stub.List(api_pb2.ListPodResourcesRequest()).pod_resources) == []


def test_injected_failure_and_duplicate_pods(tmp_path: Path) -> None:
    sock = tmp_path / "pr.sock"
    with FakePodResourcesServer(sock) as server:
        with pytest.raises(ValueError, match="duplicate"):
            server.set_pods([PodAllocation("a", "ns"), PodAllocation("a", "ns")])
        channel, stub = _stub(sock)
        with channel:
            server.fail_with(grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
            with pytest.raises(grpc.RpcError) as info:
                stub.List(api_pb2.ListPodResourcesRequest(), timeout=5)
            assert isinstance(info.value, grpc.Call)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            server.fail_with(None)
            assert stub.List(api_pb2.ListPodResourcesRequest(), timeout=5) is not None
    assert not sock.exists()


def test_device_allocation_shorthand_matches_long_form() -> None:
    short = PodAllocation.with_devices("p", "ns", RESOURCE, ["a"], container="c")
    long = PodAllocation(
        "p", "ns", (ContainerAllocation("c", (DeviceAllocation(RESOURCE, ("a",)),)),)
    )
    assert short == long
