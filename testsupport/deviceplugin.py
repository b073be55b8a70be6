"""Helpers for the device-plugin tests: config files, the plugin as a process, waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from qpu_k8s.core.journal import read_snapshot
from qpu_k8s.deviceplugin.agent import DevicePluginConfig
from qpu_k8s.deviceplugin.state import CHECKPOINT_NAME, Acquisition
from qpu_k8s.emulator import Emulator
from testsupport import REPO

RESOURCE = "quantum.example.com/qpu"
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.01) -> T:
    """Poll ``check`` until it returns a truthy value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def ibm_backend(
    emu: Emulator, name: str, resource_id: str, lanes: int = 1, **spec: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "resourceId": resource_id,
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config(resource_id),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "lanes": lanes,
            **spec,
        },
    }


def pasqal_backend(
    emu: Emulator, name: str, device: str, lanes: int = 1, **spec: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "resourceId": device,
            "type": "pasqal-cloud",
            "config": emu.pasqal_config(device),
            "credentialsSecretRef": {"name": "pasqal-creds"},
            "lanes": lanes,
            **spec,
        },
    }


@dataclass
class Layout:
    """The agent's files in one short temporary directory (unix paths are limited)."""

    root: Path

    @property
    def dp_dir(self) -> Path:
        return self.root / "dp"

    @property
    def pod_resources(self) -> Path:
        return self.root / "pr.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "backends.yaml"

    @property
    def credentials(self) -> Path:
        return self.root / "creds"

    @property
    def checkpoint(self) -> Path:
        return self.state_dir / CHECKPOINT_NAME

    def write_config(self, backends: Iterable[Mapping[str, Any]]) -> None:
        """Replace the config file atomically, as a ConfigMap volume update does."""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"backends": list(backends)}))
        tmp.replace(self.config)

    def write_secret(self, name: str, data: Mapping[str, str]) -> None:
        folder = self.credentials / name
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (folder / key).write_text(value)

    def write_emulator_secrets(self, emu: Emulator) -> None:
        self.write_secret("ibm-creds", emu.ibm_credentials())
        self.write_secret("pasqal-creds", emu.pasqal_credentials())

    def acquisitions(self) -> list[Acquisition]:
        """What the plugin's journal holds on disk, oldest first."""
        held = read_snapshot(self.checkpoint, Acquisition)
        return sorted(held.values(), key=lambda a: a.created_at)


def session_of(emu: Emulator, token: str) -> Any:
    rec = emu.state.session(token)
    assert rec is not None, f"the emulator has no session {token}"
    return rec


def release_calls(emu: Emulator, token: str) -> int:
    """Answered requests that close a session (qrmi's release: PATCH, or DELETE .../close)."""
    return sum(
        1
        for r in emu.state.requests(path_contains=f"/sessions/{token}")
        if r.method in ("PATCH", "DELETE") and r.status < 400
    )


@dataclass
class PluginProcess:
    """``python -m qpu_k8s.cli device-plugin`` as a real child process, JSON logs to a file."""

    layout: Layout
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log_file: Any = None

    def argv(self) -> list[str]:
        """Fast test settings; ``extra`` flags given later override them (argparse: last wins)."""
        lay = self.layout
        return [
            sys.executable,
            "-m",
            "qpu_k8s.cli",
            "device-plugin",
            "--device-plugin-dir", str(lay.dp_dir),
            "--pod-resources-socket", str(lay.pod_resources),
            "--state-dir", str(lay.state_dir),
            "--config", str(lay.config),
            "--credentials-dir", str(lay.credentials),
            "--metrics-address", "127.0.0.1:0",
            "--reconcile-interval", "0.1",
            "--release-grace", "0.3",
            "--kubelet-restart-hold", "0.5",
            "--probe-timeout", "2",
            "--acquire-timeout", "5",
            "--config-reload-interval", "0.2",
            "--log-level", "debug",
            *self.extra,
        ]  # fmt: skip

    def start(self) -> PluginProcess:
        index = len(list(self.layout.root.glob("plugin-*.log")))
        self.log_path = self.layout.root / f"plugin-{index}.log"
        self._log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv(),
            stdout=self._log_file,
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

    def wait_log(self, msg: str, timeout: float = 15.0, count: int = 1) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"plugin exited ({self.proc.returncode}):\n{self.text()}")
            hits = [r for r in self.records() if r.get("msg") == msg]
            return hits[count - 1] if len(hits) >= count else None

        return wait_for(check, timeout, f"log line {msg!r} #{count}", step=0.02)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    @property
    def metrics_port(self) -> int:
        return int(self.wait_log("device plugin started")["metrics_port"])

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
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

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=15)
        self._log_file.close()
        return rc

    def terminate(self) -> int:
        return self.signal(signal.SIGTERM)

    def kill(self) -> int:
        return self.signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()


def fast_config(layout: Layout, **overrides: Any) -> DevicePluginConfig:
    """The agent's settings for tests: every interval short, paths in the layout."""
    values: dict[str, Any] = {
        "device_plugin_dir": layout.dp_dir,
        "pod_resources_socket": layout.pod_resources,
        "state_dir": layout.state_dir,
        "config": layout.config,
        "credentials_dir": layout.credentials,
        "reconcile_interval": 0.1,
        "release_grace": 0.3,
        "restart_hold": 0.5,
        "probe_timeout": 2.0,
        "acquire_timeout": 5.0,
        "config_reload_interval": 0.2,
        **overrides,
    }
    return DevicePluginConfig(**values)
