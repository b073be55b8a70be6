"""Fixtures for the emulator tests: one shared emulator, reset between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qpu_k8s.emulator import Emulator, running_emulator


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[Emulator]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture
def emu(shared_emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator, with every session, job and fault forgotten afterwards."""
    yield shared_emulator
    shared_emulator.reset()
