"""The fixtures several test folders use, declared once (registered by ``tests/conftest.py``).

The node agents' tests share one emulator (:func:`~testsupport.emulator.agents_emulator`),
reset after every test that used it; each test gets its own short temporary directory
(``root``: unix socket paths are limited) holding a device-plugin :class:`Layout` and a
:class:`DraNode`, with the fake kubelet parts beside them and the agents in this process or
as real processes. A folder's ``conftest.py`` keeps what only that folder uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.deviceplugin.agent import DevicePlugin
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import FakeDevicePluginKubelet, FakeDRAKubelet, FakePodResourcesServer
from testsupport.deviceplugin import (
    Layout,
    PluginProcess,
    StartAgent,
    StartPlugin,
    all_healthy,
    fast_config,
)
from testsupport.dra import DraNode, DraProcess, StartDra
from testsupport.emulator import agents_emulator, write_backend_secrets
from testsupport.names import RESOURCE


# -- the vendor --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The agents' emulator, started once per session (use ``emu`` in a test)."""
    with agents_emulator() as emu:
        yield emu


@pytest.fixture
def emu(emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator; its sessions, requests, jobs and faults are forgotten after the
    test."""
    yield emulator
    emulator.reset()


@pytest.fixture
def root() -> Iterator[Path]:
    """A short temporary directory of the test's own, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="qk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- the device plugin ---------------------------------------------------------------------------
@pytest.fixture
def layout(root: Path) -> Layout:
    """The device plugin's files, with the Secrets the test backends name."""
    lay = Layout(root / "dp")
    lay.dp_dir.mkdir(parents=True)
    write_backend_secrets(lay.credentials)
    return lay


@pytest.fixture
def kubelet(layout: Layout) -> Iterator[FakeDevicePluginKubelet]:
    """The kubelet's device-plugin side (registration, ListAndWatch, Allocate)."""
    with FakeDevicePluginKubelet(layout.dp_dir) as kl:
        yield kl


@pytest.fixture
def pod_resources(layout: Layout) -> Iterator[FakePodResourcesServer]:
    """The kubelet's PodResources API (which pods hold which devices)."""
    with FakePodResourcesServer(layout.pod_resources) as pr:
        yield pr


@pytest.fixture
def start_agent(
    layout: Layout, kubelet: FakeDevicePluginKubelet, pod_resources: FakePodResourcesServer
) -> Iterator[StartAgent]:
    """The device plugin in this process: ``start(healthy=True, **config_overrides)`` returns
    it registered and, with ``healthy``, advertising only healthy devices."""
    agents: list[DevicePlugin] = []

    def start(healthy: bool = True, **overrides: Any) -> DevicePlugin:
        agent = DevicePlugin(fast_config(layout, **overrides))
        agents.append(agent)
        agent.start()
        assert agent.wait_registered(timeout=10), "the agent did not register"
        if healthy:
            kubelet.wait_for_devices(RESOURCE, all_healthy, timeout=30)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def plugin_process(layout: Layout) -> Iterator[StartPlugin]:
    """``qpu-k8s device-plugin`` as a real process: ``start(*flags, **env)``; the test
    brings the kubelet it needs (the fake one, or a real one)."""
    procs: list[PluginProcess] = []

    def start(*extra: str, **env: str) -> PluginProcess:
        proc = PluginProcess(layout, list(extra), dict(env)).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


# -- the DRA driver ------------------------------------------------------------------------------
@pytest.fixture
def dra_node(root: Path, emu: Emulator) -> DraNode:
    """A simulated node for the DRA driver (no backends configured yet)."""
    return DraNode(root / "dra", emu)


@pytest.fixture
def dra_kubelet(dra_node: DraNode) -> Iterator[FakeDRAKubelet]:
    """The kubelet's DRA side (plugin registration, Node(Un)PrepareResources, health)."""
    with FakeDRAKubelet(dra_node.registry_dir) as kl:
        yield kl


@pytest.fixture
def dra_process(dra_node: DraNode) -> Iterator[StartDra]:
    """The DRA driver as a real process: ``start(probe_timeout=2.0, acquire_timeout=30.0,
    **env)``."""
    procs: list[DraProcess] = []

    def start(probe_timeout: float = 2.0, acquire_timeout: float = 30.0, **env: str) -> DraProcess:
        proc = DraProcess(dra_node, dict(env), probe_timeout, acquire_timeout).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
