"""The device-plugin benchmark stays runnable (tiny sample counts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testsupport import REPO


@pytest.mark.slow
def test_benchmark_runs_and_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.deviceplugin_bench", "--n", "20", "--vendor-n", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    for row in ("bare gRPC unary call (floor)", "Allocate, vendor acquire excluded",
                "qrmi acquire, direct", "agent RSS (qpu-k8s device-plugin)"):  # fmt: skip
        assert row in out
