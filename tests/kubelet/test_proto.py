"""Our kubelet .proto files: wire facts, one-process import, and the staleness check."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qpu_k8s.proto

PROTO_DIR = Path(qpu_k8s.proto.__file__).resolve().parent
APIS = [
    "deviceplugin.v1beta1",
    "podresources.v1",
    "pluginregistration.v1",
    "dra.v1",
    "dra.v1beta1",
    "dra_health.v1alpha1",
    "dra_health.v1",
]
# The paths the kubelet calls or serves; a change here breaks the wire contract.
EXPECTED_METHODS = {
    "/v1beta1.Registration/Register",
    "/v1beta1.DevicePlugin/GetDevicePluginOptions",
    "/v1beta1.DevicePlugin/ListAndWatch",
    "/v1beta1.DevicePlugin/GetPreferredAllocation",
    "/v1beta1.DevicePlugin/Allocate",
    "/v1beta1.DevicePlugin/PreStartContainer",
    "/v1.PodResourcesLister/List",
    "/v1.PodResourcesLister/GetAllocatableResources",
    "/v1.PodResourcesLister/Get",
    "/pluginregistration.Registration/GetInfo",
    "/pluginregistration.Registration/NotifyRegistrationStatus",
    "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
    "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
    "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
    "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources",
    "/v1alpha1.DRAResourceHealth/NodeWatchResources",
    "/v1.DRAResourceHealth/NodeWatchResources",
}


def _fields(module: str, message: str) -> dict[str, int]:
    pb2 = importlib.import_module(f"qpu_k8s.proto.{module}.api_pb2")
    desc = pb2.DESCRIPTOR.message_types_by_name[message]
    return {f.name: f.number for f in desc.fields}


def test_all_apis_import_in_one_fresh_process() -> None:
    code = "\n".join(
        f"import qpu_k8s.proto.{api}.api_pb2, qpu_k8s.proto.{api}.api_pb2_grpc" for api in APIS
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_method_paths_are_the_kubelets() -> None:
    found = set()
    for api in APIS:
        pb2 = importlib.import_module(f"qpu_k8s.proto.{api}.api_pb2")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            found |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert found == EXPECTED_METHODS


@pytest.mark.parametrize(
    ("module", "message", "fields"),
    [
        (
            "deviceplugin.v1beta1",
            "ContainerAllocateResponse",
            {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5},
        ),
        (
            "deviceplugin.v1beta1",
            "DevicePluginOptions",
            {"pre_start_required": 1, "get_preferred_allocation_available": 2},
        ),
        (
            "deviceplugin.v1beta1",
            "RegisterRequest",
            {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
        ),
        ("deviceplugin.v1beta1", "Device", {"ID": 1, "health": 2, "topology": 3}),
        (
            "deviceplugin.v1beta1",
            "ContainerPreferredAllocationRequest",
            {"available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3},
        ),
        (
            "podresources.v1",
            "ClaimResource",
            {"cdi_devices": 1, "driver_name": 2, "pool_name": 3, "device_name": 4, "share_id": 5},
        ),
        (
            "podresources.v1",
            "DynamicResource",
            {"claim_name": 2, "claim_namespace": 3, "claim_resources": 4},
        ),
        (
            "pluginregistration.v1",
            "PluginInfo",
            {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4},
        ),
        (
            "dra.v1",
            "Device",
            {
                "request_names": 1,
                "pool_name": 2,
                "device_name": 3,
                "cdi_device_ids": 4,
                "share_id": 5,
            },
        ),
        (
            "dra.v1beta1",
            "Device",
            {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4},
        ),
        ("dra.v1", "Claim", {"namespace": 1, "uid": 2, "name": 3}),
        (
            "dra_health.v1alpha1",
            "DeviceHealth",
            {
                "device": 1,
                "health": 2,
                "last_updated_time": 3,
                "health_check_timeout_seconds": 4,
                "message": 5,
            },
        ),
    ],
)
def test_field_numbers(module: str, message: str, fields: dict[str, int]) -> None:
    assert _fields(module, message) == fields


def _run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qpu_k8s.proto.generate", "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generate_check_passes_on_the_tree() -> None:
    result = _run_check(PROTO_DIR)
    assert result.returncode == 0, result.stderr


def test_generate_check_names_a_modified_generated_file(tmp_path: Path) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _run_check(copy).returncode == 0  # location-independent output
    target = copy / "dra" / "v1" / "api_pb2_grpc.py"
    target.write_text(target.read_text().replace("NodePrepareResources", "NodePrepare", 1))
    (copy / "podresources" / "v1" / "api_pb2.pyi").unlink()
    result = _run_check(copy)
    assert result.returncode == 1
    assert "dra/v1/api_pb2_grpc.py: differs" in result.stderr
    assert "podresources/v1/api_pb2.pyi: missing" in result.stderr
    assert "qpu_k8s.proto.generate" in result.stderr
