"""The floors the kubelet-facing calls are measured against, on this machine.

* :func:`measure_unary_floor`: a bare gRPC unary call over a unix socket (a servicer that
  does nothing, ``GetDevicePluginOptions`` returning a constant).
* :class:`DurableFloor`: the *durability floor* of a call that must remember what it did
  before it answers (Allocate, NodePrepareResources): the same method, on the agents' own
  server class, answering a fixed response of the real size after one synced append of a
  record of the real size. No agent can answer such a call faster and stay crash safe, so
  what an agent's call costs above it is its own work.

Run ``python -m testsupport.grpc_floor [N]`` to print the bare numbers.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message

from qpu_k8s.fakekubelet.common import UnixGrpcServer, unix_target
from qpu_k8s.node.grpcserver import UnixServer
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


class DurableFloor:
    """Serves ``/<service>/<method>``: parse the request, append ``record`` to ``journal``
    and ``fdatasync`` it, answer ``response``. Use it as a context manager; call it with the
    agent's own stub on :attr:`socket_path`."""

    def __init__(
        self,
        socket_path: Path,
        method: str,
        request_type: type[Message],
        *,
        response: Message,
        record: bytes,
        journal: Path,
    ) -> None:
        service, _, name = method.strip("/").rpartition("/")
        self.socket_path = socket_path
        self._record = record
        self._response = response
        self._journal = journal
        self._fd: int | None = None
        handler = grpc.unary_unary_rpc_method_handler(
            self._answer,
            request_deserializer=request_type.FromString,
            response_serializer=type(response).SerializeToString,
        )
        generic = grpc.method_handlers_generic_handler(service, {name: handler})
        self._server = UnixServer(
            socket_path, lambda s: s.add_generic_rpc_handlers((generic,)), name="floor"
        )

    def _answer(self, request: Any, context: grpc.ServicerContext) -> Message:
        assert self._fd is not None
        os.write(self._fd, self._record)
        os.fdatasync(self._fd)
        return self._response

    def append_synced(self, count: int) -> None:
        """``count`` more synced appends, outside any call: the floor's side of the untimed
        writes an agent makes between measured calls (a release, an unprepare), so both
        sides meet the disk in the same state."""
        assert self._fd is not None
        for _ in range(count):
            os.write(self._fd, self._record)
            os.fdatasync(self._fd)

    def __enter__(self) -> DurableFloor:
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stop(grace=0)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 2000
    print(f"bare gRPC unary call over a unix socket: {summarize(measure_unary_floor(n))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
