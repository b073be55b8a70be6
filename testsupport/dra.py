"""The DRA driver under test: backends as models, vendor targets, schema validation, claims
as the scheduler leaves them, a simulated node and the driver as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from qpu_k8s.core.journal import read_snapshot
from qpu_k8s.core.model import QuantumBackend, parse_backend
from qpu_k8s.dra.agent import DraDriverConfig
from qpu_k8s.dra.cdi import CdiWriter
from qpu_k8s.dra.claims import ClaimNotFoundError
from qpu_k8s.dra.claimstatus import StatusWriteError, StatusWriter
from qpu_k8s.dra.state import CHECKPOINT_NAME, JOURNAL_VERSION, Record
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import ClaimRef
from testsupport.deviceplugin import write_yaml_atomically
from testsupport.emulator import ibm_backend, pasqal_backend, write_backend_secrets
from testsupport.names import DRIVER, NODE_LABEL
from testsupport.processes import AgentProcess

NS = "team-a"  # the namespace of the test claims


# -- backends and what their vendors answer --------------------------------------------------
def _model(spec: dict[str, Any], name: str, access: str) -> QuantumBackend:
    if access == "node-bound":
        spec["nodeSelector"] = {"kubernetes.io/hostname": "127.0.0.1"}
    return parse_backend({"name": name, "spec": spec})


def ibm_model(
    name: str = "ibm-torino",
    resource_id: str = "fake_torino",
    *,
    lanes: int = 1,
    endpoint: str = "http://127.0.0.1:1",
    access: str = "node-bound",
    attributes: dict[str, Any] | None = None,
) -> QuantumBackend:
    """An IBM QuantumBackend that no vendor serves (for code that never calls it)."""
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
    return _model(spec, name, access)


def pasqal_model(
    name: str = "pasqal-fresnel",
    resource_id: str = "FRESNEL",
    *,
    lanes: int = 1,
    endpoint: str = "http://127.0.0.1:1",
    access: str = "node-bound",
) -> QuantumBackend:
    """A Pasqal QuantumBackend that no vendor serves."""
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
    return _model(spec, name, access)


def ibm_target(source: str) -> dict[str, Any]:
    """What ``QrmiClient.target()`` returns for an IBM backend served from a fake snapshot."""
    import qiskit_ibm_runtime

    folder = Path(qiskit_ibm_runtime.__file__).parent / "fake_provider" / "backends" / source
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
    import kubernetes_validate

    kubernetes_validate.validate(obj, k8s_version, strict=True)


def node_backends(emu: Emulator, node: str) -> list[dict[str, Any]]:
    """The backends of one test node: node-bound IBM and Pasqal, plus one shared."""
    return [
        ibm_backend(emu, "ibm-torino", "fake_torino", lanes=2, node=node),
        ibm_backend(emu, "ibm-manila", "fake_manila", node=node),
        pasqal_backend(emu, "pasqal-fresnel", "FRESNEL", node=node),
        pasqal_backend(emu, "pasqal-emu-free", "EMU_FREE", node=node),
        ibm_backend(emu, "ibm-shared", "fake_nairobi", access="shared"),
    ]


# -- claims ----------------------------------------------------------------------------------
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


def put_allocated_claim(
    claims: StaticClaims,
    pool: str,
    devices: list[tuple[str, str]],
    config: list[dict[str, Any]] | None = None,
) -> ClaimRef:
    """A new claim in :data:`NS`, allocated ``devices`` of ``pool`` (:func:`allocated_claim`),
    put in ``claims``; its reference for the fake kubelet."""
    uid = str(uuid.uuid4())
    name = f"claim-{uid[:8]}"
    claims.put_claim(allocated_claim(NS, name, uid, devices, pool, config))
    return ClaimRef(NS, uid, name)


def params_config(request: str | None = None, **params: Any) -> dict[str, Any]:
    """A claim's opaque ``QPUClaimParameters`` config (for ``request``, or all)."""
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


class StaticClaims:
    """In-memory claims and Secrets (thread-safe), shaped like the apiserver's answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, str], dict[str, Any]] = {}
        self._secrets: dict[tuple[str, str], dict[str, str]] = {}

    def put_claim(self, claim: Mapping[str, Any]) -> None:
        meta = claim["metadata"]
        with self._lock:
            self._claims[(meta["namespace"], meta["name"])] = dict(claim)

    def put_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        with self._lock:
            self._secrets[(namespace, name)] = dict(data)

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            claim = self._claims.get((namespace, name))
        if claim is None:
            raise ClaimNotFoundError(f"ResourceClaim {namespace}/{name} not found")
        return claim

    def get_secret(self, namespace: str, name: str) -> dict[str, str]:
        with self._lock:
            secret = self._secrets.get((namespace, name))
        if secret is None:
            raise ClaimNotFoundError(f"Secret {namespace}/{name} not found")
        return dict(secret)


class StatusRecorder:
    """A :class:`~qpu_k8s.dra.claimstatus.StatusWriter` for tests: writes go to ``inner``
    (the real apiserver's) or, without one, are kept here; ``fail_next`` queues failures
    (StatusWriteError) for the next writes, and ``gate`` holds every write until it is set,
    so a test sees a slow or failing apiserver from the driver's side."""

    def __init__(self, inner: StatusWriter | None = None) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.cond = threading.Condition()
        self.written: dict[str, list[dict[str, Any]]] = {}
        self.attempts: dict[str, int] = {}
        self.fail_next: list[StatusWriteError] = []

    def apply_device_status(
        self,
        namespace: str,
        name: str,
        uid: str,
        devices: list[dict[str, Any]],
        field_manager: str,
    ) -> None:
        self.gate.wait()
        with self.cond:
            self.attempts[uid] = self.attempts.get(uid, 0) + 1
            self.cond.notify_all()
            failure = self.fail_next.pop(0) if self.fail_next else None
        if failure is not None:
            raise failure
        if self.inner is not None:
            self.inner.apply_device_status(namespace, name, uid, devices, field_manager)
        with self.cond:
            self.written[uid] = devices
            self.cond.notify_all()

    def wait_attempts(self, uid: str, count: int, timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.attempts.get(uid, 0) >= count, timeout):
                raise AssertionError(f"{count} status writes of {uid} within {timeout}s")

    def wait_written(self, uid: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.cond:
            if not self.cond.wait_for(lambda: uid in self.written, timeout):
                raise AssertionError(f"status of {uid} written within {timeout}s")
            return self.written[uid]


class FileClaims:
    """ClaimSource over ``claims/<ns>/<name>.json`` and ``secrets/<ns>/<name>.json``: the
    test plays the apiserver for a driver in another process (see :meth:`DraNode.claim`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        path = self.root / kind / namespace / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            what = "ResourceClaim" if kind == "claims" else "Secret"
            raise ClaimNotFoundError(f"{what} {namespace}/{name} not found") from None
        return data

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return self._read("claims", namespace, name)

    def get_secret(self, namespace: str, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._read("secrets", namespace, name).items()}


# -- a node ----------------------------------------------------------------------------------
def driver_config(root: Path, node: str, **overrides: Any) -> DraDriverConfig:
    """The driver's settings on the test node whose files are under ``root``."""
    values: dict[str, Any] = {
        "node_name": node,
        "config_path": root / "backends.yaml",
        "plugins_dir": root / "plugins",
        "registry_dir": root / "registry",
        "cdi_dir": root / "cdi",
        "state_dir": root / "state",
        "credentials_dir": root / "creds",
        "boot_id_file": root / "boot_id",
        "node_labels": {NODE_LABEL: node},
        "reload_interval": 0.2,
        "resync_seconds": 5.0,
        **overrides,
    }
    return DraDriverConfig(**values)


@dataclass
class DraNode:
    """The files of one simulated node for the DRA driver (short paths: unix sockets) and
    the emulator its backends are on; created with the backends' Secrets and a boot ID."""

    root: Path
    emu: Emulator
    name: str = field(default_factory=lambda: f"node-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_backend_secrets(self.creds)
        self.reboot()

    @property
    def node(self) -> str:
        """The node's name (also its pool's), as the DRA tests call it."""
        return self.name

    @property
    def config(self) -> Path:
        return self.root / "backends.yaml"

    @property
    def boot_id_file(self) -> Path:
        return self.root / "boot_id"

    @property
    def creds(self) -> Path:
        return self.root / "creds"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def cdi_dir(self) -> Path:
        return self.root / "cdi"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def agent_config(self, **overrides: Any) -> DraDriverConfig:
        """Settings for a driver in this process."""
        return driver_config(self.root, self.name, **overrides)

    def write_backends(self, backends: list[dict[str, Any]]) -> None:
        write_yaml_atomically(self.config, {"backends": backends})

    def reboot(self) -> None:
        """A new boot ID, as after a node reboot (the CDI tmpfs is the caller's to empty)."""
        self.boot_id_file.write_text(str(uuid.uuid4()))

    def claim(
        self,
        devices: list[tuple[str, str]],
        *,
        config: list[dict[str, Any]] | None = None,
        namespace: str = NS,
    ) -> tuple[str, str, str]:
        """Store an allocated claim (``(request, device)`` pairs) where :class:`FileClaims`
        reads it; returns (namespace, uid, name)."""
        uid = str(uuid.uuid4())
        name = f"claim-{uid[:8]}"
        doc = allocated_claim(namespace, name, uid, devices, self.name, config)
        folder = self.root / "claims" / namespace
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(doc))
        return namespace, uid, name

    def claim_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        folder = self.root / "secrets" / namespace
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(dict(data)))

    def cdi_env(self, uid: str) -> dict[str, str]:
        """The env the driver's CDI spec for claim ``uid`` injects."""
        return CdiWriter(self.cdi_dir).read_env(uid)

    def checkpoint(self) -> dict[str, Any]:
        """The driver's claims and owed releases on disk: ``{"claims": {uid: record},
        "owed": {id: record}}`` (what it knows of backends left out)."""
        state = read_snapshot(self.state_dir / CHECKPOINT_NAME, Record, JOURNAL_VERSION)
        out: dict[str, Any] = {"claims": {}, "owed": {}}
        for key, rec in state.items():
            kind, _, ident = key.partition("/")
            if kind in ("claim", "owed"):
                out["claims" if kind == "claim" else "owed"][ident] = rec.root.model_dump(
                    mode="json"
                )
        return out


@dataclass
class DraProcess(AgentProcess):
    """``python -m testsupport.dra_child`` on a :class:`DraNode`, JSON logs in a file.

    Each start is a new pod (its own socket names): the fake kubelet finds sockets by
    (path, inode), and a socket recreated at once under the same path can get the same
    inode back, which only a real kubelet's fsnotify would notice.
    """

    what: ClassVar[str] = "DRA driver"
    log_prefix: ClassVar[str] = "dra"
    started_msg: ClassVar[str] = "dra child started"
    log_timeout: ClassVar[float] = 20.0

    node: DraNode
    env: dict[str, str] = field(default_factory=dict)
    probe_timeout: float = 2.0
    acquire_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def log_dir(self) -> Path:
        return self.node.root

    def argv(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "testsupport.dra_child",
            "--root", str(self.node.root),
            "--node", self.node.name,
            "--probe-timeout", str(self.probe_timeout),
            "--acquire-timeout", str(self.acquire_timeout),
            "--instance", f"i{index}",
        ]  # fmt: skip


StartDra = Callable[..., DraProcess]
"""What the ``dra_process`` fixture gives: ``start(probe_timeout=..., acquire_timeout=...,
**env)``."""
