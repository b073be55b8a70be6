"""The QRMI adapter benchmark stays runnable (tiny sample counts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport import REPO


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.adapter_bench", "--rounds", "2", "--per-round", "3",
         "--held", "2", "--arrivals", "3", "--gap", "0.05"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout  # fmt: skip
    for row in ("| acquire |", "| acquire, 2 sessions held |", "| status (health probe) |",
                "acquire through QrmiClient vs direct qrmi",
                "Pods coming to a busy node (3 acquires"):  # fmt: skip
        assert row in out
