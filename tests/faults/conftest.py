"""Fixtures of the fault-injection suite: one emulator with this suite's credentials, the
device plugin and the DRA driver as real processes (or in-process where the test measures
load), the fake kubelet parts, all on real unix sockets in short temporary directories."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.deviceplugin.agent import DevicePlugin
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
)
from testsupport.deviceplugin import Layout, PluginProcess, all_healthy, fast_config
from testsupport.dra import DraNode, DraProcess
from testsupport.emulator import agents_emulator, write_backend_secrets
from testsupport.names import RESOURCE


@pytest.fixture(scope="session")
def fault_emulator() -> Iterator[Emulator]:
    with agents_emulator() as emu:
        yield emu


@pytest.fixture
def emu(fault_emulator: Emulator) -> Iterator[Emulator]:
    """The suite's emulator; sessions, requests and faults are forgotten after each test."""
    yield fault_emulator
    fault_emulator.reset()


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- device plugin ---------------------------------------------------------------------------
@pytest.fixture
def layout(root: Path) -> Layout:
    lay = Layout(root / "dp")
    lay.dp_dir.mkdir(parents=True)
    write_backend_secrets(lay.credentials)
    return lay


@pytest.fixture
def kubelet(layout: Layout) -> Iterator[FakeDevicePluginKubelet]:
    with FakeDevicePluginKubelet(layout.dp_dir) as kl:
        yield kl


@pytest.fixture
def pod_resources(layout: Layout) -> Iterator[FakePodResourcesServer]:
    with FakePodResourcesServer(layout.pod_resources) as pr:
        yield pr


@pytest.fixture
def plugin_process(
    layout: Layout, kubelet: FakeDevicePluginKubelet, pod_resources: FakePodResourcesServer
) -> Iterator[Callable[..., PluginProcess]]:
    """Start ``qpu-k8s device-plugin`` as a process: ``start(*flags, **env)``."""
    procs: list[PluginProcess] = []

    def start(*extra: str, **env: str) -> PluginProcess:
        proc = PluginProcess(layout, list(extra), dict(env)).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def start_agent(
    layout: Layout, kubelet: FakeDevicePluginKubelet, pod_resources: FakePodResourcesServer
) -> Iterator[Callable[..., DevicePlugin]]:
    """The device plugin in this process (load tests read its state directly)."""
    agents: list[DevicePlugin] = []

    def start(**overrides: Any) -> DevicePlugin:
        agent = DevicePlugin(fast_config(layout, **overrides))
        agents.append(agent)
        agent.start()
        assert agent.wait_registered(timeout=10), "the agent did not register"
        kubelet.wait_for_devices(RESOURCE, all_healthy, timeout=30)
        return agent

    yield start
    for agent in agents:
        agent.stop()


# -- DRA driver ------------------------------------------------------------------------------
@pytest.fixture
def dra_node(root: Path, fault_emulator: Emulator) -> DraNode:
    return DraNode(root / "dra", fault_emulator)


@pytest.fixture
def dra_kubelet(dra_node: DraNode) -> Iterator[FakeDRAKubelet]:
    with FakeDRAKubelet(dra_node.registry_dir) as kl:
        yield kl


@pytest.fixture
def dra_process(dra_node: DraNode) -> Iterator[Callable[..., DraProcess]]:
    """Start the DRA driver as a process: ``start(probe_timeout=..., acquire_timeout=...,
    **env)``."""
    procs: list[DraProcess] = []

    def start(probe_timeout: float = 2.0, acquire_timeout: float = 30.0, **env: str) -> DraProcess:
        proc = DraProcess(dra_node, dict(env), probe_timeout, acquire_timeout).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
