"""Fixtures for the device-plugin tests: emulator, fake kubelet, the agent in-process or as a
real process, all on real unix sockets in a short temporary directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.deviceplugin.agent import DevicePlugin
from qpu_k8s.emulator import Emulator, running_emulator
from qpu_k8s.fakekubelet import FakeDevicePluginKubelet, FakePodResourcesServer
from testsupport.deviceplugin import Layout, PluginProcess, all_healthy, fast_config
from testsupport.names import RESOURCE


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[Emulator]:
    with running_emulator(noise=False) as emu:
        yield emu


@pytest.fixture
def emu(shared_emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator; sessions, jobs and faults are forgotten after each test."""
    yield shared_emulator
    shared_emulator.reset()


@pytest.fixture
def layout(emu: Emulator) -> Iterator[Layout]:
    root = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    lay = Layout(root)
    lay.dp_dir.mkdir()
    lay.write_emulator_secrets(emu)
    yield lay
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kubelet(layout: Layout) -> Iterator[FakeDevicePluginKubelet]:
    with FakeDevicePluginKubelet(layout.dp_dir) as kl:
        yield kl


@pytest.fixture
def pod_resources(layout: Layout) -> Iterator[FakePodResourcesServer]:
    with FakePodResourcesServer(layout.pod_resources) as pr:
        yield pr


@pytest.fixture
def start_agent(
    layout: Layout, kubelet: FakeDevicePluginKubelet, pod_resources: FakePodResourcesServer
) -> Iterator[Callable[..., DevicePlugin]]:
    """Start the agent in this process; it is registered and advertising when returned."""
    agents: list[DevicePlugin] = []

    def start(healthy: bool = True, **overrides: Any) -> DevicePlugin:
        agent = DevicePlugin(fast_config(layout, **overrides))
        agents.append(agent)
        agent.start()
        assert agent.wait_registered(timeout=5), "the agent did not register"
        if healthy:
            kubelet.wait_for_devices(RESOURCE, all_healthy, timeout=10)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def plugin_process(layout: Layout) -> Iterator[Callable[..., PluginProcess]]:
    procs: list[PluginProcess] = []

    def start(*extra: str, **env: str) -> PluginProcess:
        proc = PluginProcess(layout, list(extra), dict(env)).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
