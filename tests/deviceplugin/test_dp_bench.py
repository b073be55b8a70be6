"""The device-plugin benchmark stays runnable (tiny sample counts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport import REPO


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.deviceplugin_bench", "--levels", "1", "10",
         "--rounds", "2", "--per-round", "5", "--vendor-n", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout  # fmt: skip
    for row in ("| live acquisitions | floor p50 | Allocate p50 |", "| 10 |",
                "direct qrmi acquire p50", "RSS of that process",
                "Allocate (vendor excluded) vs durability floor",
                "Allocate flat from 1 to 10 live"):  # fmt: skip
        assert row in out
