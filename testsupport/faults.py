"""Helpers of the fault-injection suite: the DRA driver as a process, a simulated node,
backends, metric parsing, and the numbers each test reports for docs/reliability.md.

The device-plugin helpers (layout, plugin process, emulator backends) are in
``testsupport.deviceplugin``; this module adds the DRA side and what both share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qpu_k8s.core.journal import read_snapshot
from qpu_k8s.dra.state import CHECKPOINT_NAME, Record
from qpu_k8s.emulator import Emulator, SessionRecord
from testsupport import REPO
from testsupport.deviceplugin import wait_for

# Credential values of this suite: distinctive, so a scan finds any copy of them.
IBM_KEY = "fault-suite-ibm-apikey-6c1f0e9d"
PASQAL_TOKEN = "fault-suite-pasqal-token-4b7a2d11"
USER_KEY = "fault-suite-user-apikey-93e5aa70"  # a user's own key, from a claim's Secret
SECRETS = (IBM_KEY, PASQAL_TOKEN, USER_KEY)
NODE_LABEL = "qpu-k8s.test/node"
DRIVER = "qpu.quantum.example.com"
NS = "team-a"
CHILD = "testsupport.dra_child"  # run with -m from the repo root
RESULTS = Path(os.environ.get("QPU_K8S_FAULT_RESULTS", "/tmp/qpu-k8s-fault-results.jsonl"))


def record_result(fault: str, **numbers: Any) -> None:
    """Append one measured outcome (docs/reliability.md is written from these)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"fault": fault, "at": time.time(), **numbers}) + "\n")


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total


def ibm(
    emu: Emulator,
    name: str,
    rid: str,
    *,
    lanes: int = 1,
    node: str | None = None,
    max_ttl: int | None = None,
    secret_name: str = "ibm-creds",  # noqa: S107 - a Secret name, not a value
    probe: int = 5,
) -> dict[str, Any]:
    """An IBM backend on the emulator; node-bound to ``node`` when given."""
    config = emu.ibm_config(rid)
    if max_ttl is not None:
        config["QRMI_IBM_QCS_SESSION_MAX_TTL"] = str(max_ttl)
    spec: dict[str, Any] = {
        "resourceId": rid,
        "type": "ibm-quantum-compute-service",
        "config": config,
        "credentialsSecretRef": {"name": secret_name},
        "lanes": lanes,
        "probeIntervalSeconds": probe,
    }
    if node is not None:
        spec |= {"access": "node-bound", "nodeSelector": {NODE_LABEL: node}}
    return {"name": name, "spec": spec}


def pasqal(emu: Emulator, name: str, device: str, *, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceId": device,
        "type": "pasqal-cloud",
        "config": emu.pasqal_config(device),
        "credentialsSecretRef": {"name": "pasqal-creds"},
        "probeIntervalSeconds": 5,
    }
    if node is not None:
        spec |= {"access": "node-bound", "nodeSelector": {NODE_LABEL: node}}
    return {"name": name, "spec": spec}


def write_secret(folder: Path, name: str, data: Mapping[str, str]) -> None:
    """A Secret volume: ``<folder>/<name>/<KEY>`` files."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (folder / name / key).write_text(value)


def write_yaml_atomically(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


@dataclass
class DraNode:
    """The files of one simulated node for the DRA driver (short paths: unix sockets)."""

    root: Path
    name: str = field(default_factory=lambda: f"node-{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_secret(self.creds, "ibm-creds", {"QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY})
        write_secret(self.creds, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": PASQAL_TOKEN})
        self.reboot()

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

    def write_backends(self, backends: list[dict[str, Any]]) -> None:
        write_yaml_atomically(self.root / "backends.yaml", {"backends": backends})

    def reboot(self) -> None:
        """A new boot ID, as after a node reboot (the CDI tmpfs is the caller's to empty)."""
        (self.root / "boot_id").write_text(str(uuid.uuid4()))

    def claim(
        self,
        devices: list[tuple[str, str]],
        *,
        config: list[dict[str, Any]] | None = None,
        namespace: str = NS,
    ) -> tuple[str, str, str]:
        """Store an allocated claim (``(request, device)`` pairs); returns (ns, uid, name)."""
        uid = str(uuid.uuid4())
        name = f"claim-{uid[:8]}"
        doc = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"namespace": namespace, "name": name, "uid": uid},
            "spec": {"devices": {"requests": [{"name": r} for r, _ in devices]}},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": r, "driver": DRIVER, "pool": self.name, "device": d}
                            for r, d in devices
                        ],
                        "config": config or [],
                    }
                }
            },
        }
        folder = self.root / "claims" / namespace
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(doc))
        return namespace, uid, name

    def claim_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        folder = self.root / "secrets" / namespace
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(dict(data)))

    def cdi_env(self, uid: str) -> dict[str, str]:
        doc = json.loads((self.cdi_dir / f"quantum.example.com-qpu_{uid}.json").read_text())
        return dict(item.partition("=")[::2] for item in doc["devices"][0]["containerEdits"]["env"])

    def checkpoint(self) -> dict[str, Any]:
        """The driver's claims and owed releases on disk: ``{"claims": {uid: record},
        "owed": {id: record}}`` (what it knows of backends left out)."""
        state = read_snapshot(self.state_dir / CHECKPOINT_NAME, Record)
        out: dict[str, Any] = {"claims": {}, "owed": {}}
        for key, rec in state.items():
            kind, _, ident = key.partition("/")
            if kind in ("claim", "owed"):
                out["claims" if kind == "claim" else "owed"][ident] = rec.root.model_dump(
                    mode="json"
                )
        return out


@dataclass
class DraProcess:
    """``python -m testsupport.dra_child`` as a real process, JSON logs in a file."""

    node: DraNode
    env: dict[str, str] = field(default_factory=dict)
    probe_timeout: float = 2.0
    acquire_timeout: float = 30.0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> DraProcess:
        """Each start is a new pod (its own socket names): the fake kubelet finds sockets
        by (path, inode), and a socket recreated at once under the same path can get the
        same inode back, which only a real kubelet's fsnotify would notice."""
        index = len(list(self.node.root.glob("dra-*.log")))
        self.log_path = self.node.root / f"dra-{index}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    CHILD,
                    "--root",
                    str(self.node.root),
                    "--node",
                    self.node.name,
                    "--probe-timeout",
                    str(self.probe_timeout),
                    "--acquire-timeout",
                    str(self.acquire_timeout),
                    "--instance",
                    f"i{index}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=REPO,
            )
        return self

    def records(self) -> list[dict[str, Any]]:
        assert self.log_path is not None
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"msg": line, "unparsed": True})
        return out

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_log(self, msg: str, timeout: float = 20.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.proc is not None
            hits = [r for r in self.records() if r.get("msg") == msg]
            if hits:
                return hits[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"DRA driver exited ({self.proc.returncode}):\n{self.text()}")
            return None

        return wait_for(check, timeout, f"DRA log line {msg!r}", step=0.02)

    def started(self) -> dict[str, Any]:
        return self.wait_log("dra child started")

    def metrics(self) -> str:
        port = int(self.started()["metrics_port"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return metric_value(self.metrics(), name, labels)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.wait_exit()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)


def session_of(emu: Emulator, token: str) -> SessionRecord:
    rec = emu.state.session(token)
    assert rec is not None, f"the emulator has no session {token}"
    return rec


def open_tokens(emu: Emulator) -> set[str]:
    return {s.id for s in emu.state.open_sessions()}


def release_requests(emu: Emulator, token: str) -> int:
    """Requests that close a session (qrmi's release: PATCH, or DELETE .../close)."""
    return sum(
        1
        for r in emu.state.requests(path_contains=f"/sessions/{token}")
        if r.method in ("PATCH", "DELETE") and r.status < 400
    )


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 3)
