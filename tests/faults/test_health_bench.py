"""The health benchmark stays runnable and prints its markdown table (target checked)."""

from __future__ import annotations

import pytest

from benchmarks import health_bench


def test_health_bench_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert health_bench.main(["--n", "2", "--apiserver", "no"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert any("ListAndWatch" in r and "<= 1 s: met" in r for r in rows), out
    assert any("health stream" in r and "<= 1 s: met" in r for r in rows), out
    assert not any("ResourceSlice" in r for r in rows)  # --apiserver no
