"""The device plugin under test: its files in one short directory, its settings for tests,
and the plugin as a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from qpu_k8s.core.journal import read_snapshot
from qpu_k8s.deviceplugin.agent import DevicePlugin, DevicePluginConfig
from qpu_k8s.deviceplugin.state import CHECKPOINT_NAME, JOURNAL_VERSION, Acquisition
from qpu_k8s.fakekubelet import DeviceState, FakePodResourcesServer
from testsupport.emulator import write_secret
from testsupport.processes import AgentProcess
from testsupport.waiting import wait_for


def write_yaml_atomically(path: Path, doc: Any) -> None:
    """Replace ``path`` in one rename, as a ConfigMap volume update does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


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
        write_yaml_atomically(self.config, {"backends": list(backends)})

    def write_secret(self, name: str, data: Mapping[str, str]) -> None:
        write_secret(self.credentials, name, data)

    def acquisitions(self) -> list[Acquisition]:
        """What the plugin's journal holds on disk, oldest first."""
        held = read_snapshot(self.checkpoint, Acquisition, JOURNAL_VERSION)
        return sorted(held.values(), key=lambda a: a.created_at)


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


@dataclass
class PluginProcess(AgentProcess):
    """``python -m qpu_k8s.cli device-plugin`` as a real child process, JSON logs to a file."""

    what: ClassVar[str] = "device plugin"
    log_prefix: ClassVar[str] = "plugin"
    started_msg: ClassVar[str] = "device plugin started"

    layout: Layout
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def log_dir(self) -> Path:
        return self.layout.root

    def argv(self, index: int = 0) -> list[str]:
        """Fast test settings (those of :func:`fast_config`); ``extra`` flags given later
        override them (argparse: last wins)."""
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


StartPlugin = Callable[..., PluginProcess]
"""What the ``plugin_process`` fixture gives: ``start(*flags, **env)``."""

StartAgent = Callable[..., DevicePlugin]
"""What the ``start_agent`` fixture gives: ``start(healthy=True, **config_overrides)``."""


def all_healthy(devices: Sequence[DeviceState]) -> bool:
    """Some devices, every one healthy (a check for ``wait_for_devices``)."""
    return bool(devices) and all(d.healthy for d in devices)


def more_lists(pod_resources: FakePodResourcesServer, n: int = 8) -> None:
    """Let the plugin reconcile ``n`` more times (well past the 0.3 s release grace): wait
    for ``n`` more PodResources List calls."""
    calls = pod_resources.calls("List")
    wait_for(
        lambda: pod_resources.calls("List") >= calls + n, 10, f"{n} more PodResources List calls"
    )
