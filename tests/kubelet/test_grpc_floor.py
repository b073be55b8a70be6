"""The bare unary-call latency floor helper used by the benchmarks."""

from __future__ import annotations

import pytest

from testsupport.grpc_floor import measure_unary_floor, percentile, summarize


def test_measure_returns_one_positive_sample_per_call() -> None:
    samples = measure_unary_floor(n=50, warmup=5)
    assert len(samples) == 50
    assert all(0 < s < 1.0 for s in samples)
    summary = summarize(samples)
    assert summary.p50 <= summary.p99 <= summary.max
    assert "p99=" in str(summary)


def test_percentile_is_nearest_rank() -> None:
    data = [float(i) for i in range(1, 101)]
    assert percentile(data, 50) == 50.0
    assert percentile(data, 99) == 99.0
    assert percentile(data, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="at least 1"):
        measure_unary_floor(n=0)
