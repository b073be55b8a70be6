"""Fixtures for the fake-kubelet tests: directories and a running tiny device plugin."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.tinyplugins import TinyDevicePlugin


@pytest.fixture
def dp_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dp"
    path.mkdir()
    return path


@pytest.fixture
def tiny_plugin(dp_dir: Path) -> Iterator[TinyDevicePlugin]:
    plugin = TinyDevicePlugin(dp_dir)
    plugin.start()
    yield plugin
    plugin.stop()


@pytest.fixture
def dra_dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "reg", tmp_path / "plugins"


@pytest.fixture(autouse=True)
def no_leaked_fake_threads() -> Iterator[None]:
    """Every fake and tiny plugin must have joined its threads when its test ends."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("fake-")]
    assert leaked == [], f"threads left running: {leaked}"
