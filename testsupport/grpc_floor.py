"""The latency floor of a bare gRPC unary call over a unix socket on this machine.

Benchmarks compare the kubelet-facing calls (Allocate, NodePrepareResources, ...) with this:
a servicer that does nothing (``GetDevicePluginOptions`` returning a constant) measured with
the same client stack, so what remains above it is our own work.

Run ``python -m testsupport.grpc_floor [N]`` to print the numbers.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from qpu_k8s.fakekubelet.common import UnixGrpcServer, unix_target
from qpu_k8s.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc


class _Trivial(api_pb2_grpc.DevicePluginServicer):
    _ANSWER = api_pb2.DevicePluginOptions(pre_start_required=False)

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return self._ANSWER


@dataclass(frozen=True)
class LatencySummary:
    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    max: float

    def __str__(self) -> str:
        ms = 1e3
        return (
            f"n={self.n} p50={self.p50 * ms:.3f}ms p90={self.p90 * ms:.3f}ms "
            f"p99={self.p99 * ms:.3f}ms mean={self.mean * ms:.3f}ms max={self.max * ms:.3f}ms"
        )


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the samples."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summarize(samples: list[float]) -> LatencySummary:
    return LatencySummary(
        n=len(samples),
        p50=percentile(samples, 50),
        p90=percentile(samples, 90),
        p99=percentile(samples, 99),
        mean=statistics.fmean(samples),
        max=max(samples),
    )


def measure_unary_floor(
    n: int = 2000, warmup: int = 200, socket_dir: Path | None = None
) -> list[float]:
    """Latency in seconds of ``n`` sequential unary calls (after ``warmup`` unmeasured ones)
    to a trivial servicer on a fresh unix socket, same process, one channel."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with tempfile.TemporaryDirectory(prefix="grpc-floor-", dir=socket_dir) as tmp:
        server = UnixGrpcServer(
            Path(tmp, "floor.sock"),
            lambda s: api_pb2_grpc.add_DevicePluginServicer_to_server(_Trivial(), s),
            workers=2,
        )
        server.start()
        try:
            with grpc.insecure_channel(unix_target(server.socket_path)) as channel:
                call = api_pb2_grpc.DevicePluginStub(channel).GetDevicePluginOptions
                request = api_pb2.Empty()
                for _ in range(warmup):
                    call(request, timeout=5)
                samples = []
                clock = time.perf_counter
                for _ in range(n):
                    start = clock()
                    call(request, timeout=5)
                    samples.append(clock() - start)
            return samples
        finally:
            server.stop(grace=None)


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 2000
    print(f"bare gRPC unary call over a unix socket: {summarize(measure_unary_floor(n))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
