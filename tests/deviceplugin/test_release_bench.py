"""The release-latency benchmark stays runnable (one pod per row, no slow old-rule rows)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport import REPO


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.release_bench", "--n", "1", "--old-n", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    for row in ("| device plugin: container ended for good | 1 |",
                "| device plugin: pod ended just after a kubelet restart | 1 |",
                "| DRA: from NodeUnprepareResources | 1 |",
                "release: device plugin, after the last container ended",
                "release: DRA, after NodeUnprepareResources"):  # fmt: skip
        assert row in out
