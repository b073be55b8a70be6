"""Fixtures for the emulator's own tests: one emulator as it ships (calibrated noise, its
default credentials), reset after each test.

Here ``emu`` is that emulator rather than the agents' noise-free one of
``testsupport.fixtures``: these tests check the emulator itself, noise model included."""

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
    """This folder's emulator, with every session, job and fault forgotten afterwards."""
    yield shared_emulator
    shared_emulator.reset()
