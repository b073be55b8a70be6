"""Freed heap memory goes back to the system after a burst, at most so often."""

from __future__ import annotations

import pytest

from qpu_k8s.core import memory


@pytest.mark.skipif(memory._MALLOC_TRIM is None, reason="not glibc: trimming is a no-op")
def test_trim_runs_and_respects_its_interval() -> None:
    assert memory.trim() is True
    assert memory.trim(at_most_every=3600.0) is False  # just ran
    assert memory.trim() is True  # no interval: always


def test_trim_is_a_no_op_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_MALLOC_TRIM", None)
    assert memory.trim() is False
