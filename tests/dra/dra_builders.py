"""Builders shared by the DRA tests: backends like the emulator's, and schema validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import qiskit_ibm_runtime

from qpu_k8s.model import QuantumBackend, parse_backend

FAKE_BACKENDS = Path(qiskit_ibm_runtime.__file__).parent / "fake_provider" / "backends"


def ibm_backend(
    name: str = "ibm-torino",
    resource_id: str = "fake_torino",
    *,
    lanes: int = 1,
    endpoint: str = "http://127.0.0.1:1",
    access: str = "node-bound",
    attributes: dict[str, Any] | None = None,
) -> QuantumBackend:
    spec: dict[str, Any] = {
        "resourceId": resource_id,
        "type": "ibm-quantum-compute-service",
        "config": {
            "QRMI_IBM_QCS_ENDPOINT": f"{endpoint}/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": endpoint,
            "QRMI_IBM_QCS_SERVICE_CRN": "crn:v1:emulator",
        },
        "credentialsSecretRef": {"name": "ibm-creds"},
        "lanes": lanes,
        "access": access,
        "attributes": attributes or {},
    }
    if access == "node-bound":
        spec["nodeSelector"] = {"kubernetes.io/hostname": "127.0.0.1"}
    return parse_backend({"name": name, "spec": spec})


def pasqal_backend(
    name: str = "pasqal-fresnel",
    resource_id: str = "FRESNEL",
    *,
    lanes: int = 1,
    endpoint: str = "http://127.0.0.1:1",
    access: str = "node-bound",
) -> QuantumBackend:
    spec: dict[str, Any] = {
        "resourceId": resource_id,
        "type": "pasqal-cloud",
        "config": {
            "QRMI_PASQAL_CLOUD_PROJECT_ID": "emulator-project",
            "QRMI_PASQAL_CLOUD_BASE_URL": endpoint,
        },
        "credentialsSecretRef": {"name": "pasqal-creds"},
        "lanes": lanes,
        "access": access,
    }
    if access == "node-bound":
        spec["nodeSelector"] = {"kubernetes.io/hostname": "127.0.0.1"}
    return parse_backend({"name": name, "spec": spec})


def ibm_target(source: str) -> dict[str, Any]:
    """What ``QrmiClient.target()`` returns for an IBM backend served from a fake snapshot."""
    folder = FAKE_BACKENDS / source
    return {
        "configuration": json.loads((folder / f"conf_{source}.json").read_text()),
        "properties": json.loads((folder / f"props_{source}.json").read_text()),
    }


def pulser_target(device: str) -> dict[str, Any]:
    import pulser.devices

    out: dict[str, Any] = json.loads(getattr(pulser.devices, device).to_abstract_repr())
    return out


def validate(obj: dict[str, Any], k8s_version: str = "1.34.0") -> None:
    """Validate against the real (strict) OpenAPI schema of that Kubernetes version."""
    kubernetes_validate.validate(obj, k8s_version, strict=True)
