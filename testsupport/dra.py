"""Builders shared by the DRA tests: backends like the emulator's, and schema validation."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import qiskit_ibm_runtime
import yaml

from qpu_k8s.core.model import QuantumBackend, parse_backend
from qpu_k8s.dra.agent import DraDriverConfig

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


# -- a node for the driver ---------------------------------------------------------------
IBM_KEY = "ibm-apikey-for-the-backend-0001"  # the backend's own credentials
ALICE_KEY = "alice-personal-apikey-0002"  # a user's credentials, from a claim's Secret
PASQAL_TOKEN = "pasqal-token-for-the-backend-0003"
SECRET_VALUES = (IBM_KEY, ALICE_KEY, PASQAL_TOKEN)
DRIVER = "qpu.quantum.example.com"
NODE_LABEL = "qpu-k8s.test/node"


def node_backends(emu: Any, node: str) -> list[dict[str, Any]]:
    """The backends of one test node: node-bound IBM and Pasqal, plus one shared."""

    def ibm(name: str, rid: str, lanes: int = 1, access: str = "node-bound") -> dict[str, Any]:
        spec: dict[str, Any] = {
            "resourceId": rid,
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config(rid),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "lanes": lanes,
            "access": access,
        }
        if access == "node-bound":
            spec["nodeSelector"] = {NODE_LABEL: node}
        return {"name": name, "spec": spec}

    def pasqal(name: str, rid: str) -> dict[str, Any]:
        return {
            "name": name,
            "spec": {
                "resourceId": rid,
                "type": "pasqal-cloud",
                "config": emu.pasqal_config(rid),
                "credentialsSecretRef": {"name": "pasqal-creds"},
                "access": "node-bound",
                "nodeSelector": {NODE_LABEL: node},
            },
        }

    return [
        ibm("ibm-torino", "fake_torino", lanes=2),
        ibm("ibm-manila", "fake_manila"),
        pasqal("pasqal-fresnel", "FRESNEL"),
        pasqal("pasqal-emu-free", "EMU_FREE"),
        ibm("ibm-shared", "fake_nairobi", access="shared"),
    ]


def allocated_claim(  # noqa: PLR0917
    namespace: str,
    name: str,
    uid: str,
    devices: list[tuple[str, str]],
    pool: str,
    config: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A claim as the scheduler leaves it: ``devices`` are (request, device) pairs."""
    alloc: dict[str, Any] = {
        "devices": {
            "results": [
                {"request": r, "driver": DRIVER, "pool": pool, "device": d} for r, d in devices
            ],
            "config": config or [],
        }
    }
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"devices": {"requests": [{"name": r} for r, _ in devices]}},
        "status": {"allocation": alloc},
    }


def params_config(request: str | None = None, **params: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "source": "FromClaim",
        "opaque": {
            "driver": DRIVER,
            "parameters": {
                "apiVersion": "qpu.quantum.example.com/v1alpha1",
                "kind": "QPUClaimParameters",
                **params,
            },
        },
    }
    if request:
        cfg["requests"] = [request]
    return cfg


@dataclass
class NodeEnv:
    """Directories and files of one simulated node (short paths: unix sockets)."""

    root: Path
    node: str
    emu: Any

    @property
    def config(self) -> Path:
        return self.root / "backends.yaml"

    @property
    def boot_id_file(self) -> Path:
        return self.root / "boot_id"

    def write_backends(self, backends: list[dict[str, Any]]) -> None:
        tmp = self.root / ".backends.tmp"
        tmp.write_text(yaml.safe_dump({"backends": backends}))
        tmp.replace(self.config)

    def reboot(self) -> None:
        self.boot_id_file.write_text(str(uuid.uuid4()))

    def agent_config(self, **overrides: Any) -> DraDriverConfig:
        values: dict[str, Any] = {
            "node_name": self.node,
            "config_path": self.config,
            "plugins_dir": self.root / "plugins",
            "registry_dir": self.root / "registry",
            "cdi_dir": self.root / "cdi",
            "state_dir": self.root / "state",
            "credentials_dir": self.root / "creds",
            "boot_id_file": self.boot_id_file,
            "node_labels": {NODE_LABEL_KEY: self.node},
            "reload_interval": 0.2,
            "resync_seconds": 5.0,
        }
        values.update(overrides)
        return DraDriverConfig(**values)


NODE_LABEL_KEY = "qpu-k8s.test/node"
