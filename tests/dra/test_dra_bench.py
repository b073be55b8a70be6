"""The DRA benchmark stays runnable (tiny sample counts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport import REPO


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.dra_bench", "--levels", "1", "10",
         "--rounds", "2", "--per-round", "5", "--vendor-n", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout  # fmt: skip
    for row in ("| prepared claims | floor p50 | prepare p50 |", "| 10 |",
                "direct qrmi acquire p50",
                "NodePrepareResources (vendor excluded) vs durability floor",
                "NodePrepareResources flat from 1 to 10 claims"):  # fmt: skip
        assert row in out
