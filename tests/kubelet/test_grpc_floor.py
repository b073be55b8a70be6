"""The floors the benchmarks measure against: a bare unary call, and the durability floor."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from qpu_k8s.fakekubelet.common import unix_target
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from testsupport.grpc_floor import DurableFloor, measure_unary_floor, percentile, summarize


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


def test_durable_floor_answers_after_one_synced_append_per_call(tmp_path: Path) -> None:
    answer = api_pb2.AllocateResponse(
        container_responses=[api_pb2.ContainerAllocateResponse(envs={"A": "1"})]
    )
    record = b'{"ops":[]}\n'
    sock = tmp_path / "floor.sock"
    with (
        DurableFloor(
            sock,
            "/v1beta1.DevicePlugin/Allocate",
            api_pb2.AllocateRequest,
            response=answer,
            record=record,
            journal=tmp_path / "floor.journal",
        ) as floor,
        grpc.insecure_channel(unix_target(sock)) as channel,
    ):
        call = api_pb2_grpc.DevicePluginStub(channel).Allocate
        for _ in range(3):
            assert call(api_pb2.AllocateRequest(), timeout=5) == answer
        floor.append_synced(2)
    assert (tmp_path / "floor.journal").read_bytes() == record * 5
