"""The node agents' memory benchmark stays runnable (one backend, no settling)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport import REPO


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_bench", "--levels", "1", "--settle", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    for row in (
        "| device plugin | 1 |",
        "| DRA | 1 |",
        "The floor, the agent's modules imported",
        "memory: device plugin with 1 backends",
        "memory: DRA with 1 backends",
    ):
        assert row in out
