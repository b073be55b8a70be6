"""The kubelet-facing gRPC side: ``v1.DRAPlugin`` and ``v1beta1.DRAPlugin`` on one socket.

The two versions are wire-identical except v1's optional ``Device.share_id`` (unused: one
device per lane, no shared devices), so both servicers translate into the same
:class:`~.prepare.Preparer` calls. A claim's failure is reported in its own ``error``
field, so one bad claim does not fail the others of the same call; the kubelet retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import grpc

from qpu_k8s.proto.dra.v1 import api_pb2 as v1
from qpu_k8s.proto.dra.v1 import api_pb2_grpc as v1_grpc
from qpu_k8s.proto.dra.v1beta1 import api_pb2 as v1beta1
from qpu_k8s.proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc

from . import metrics
from .prepare import PreparedDevice, PrepareError, Preparer

log = logging.getLogger(__name__)


class _ClaimMsg(Protocol):
    namespace: str
    uid: str
    name: str


def _outcome(fn: Callable[[], object], op: str, claim: _ClaimMsg) -> tuple[object, str]:
    """Run one claim's operation; returns (value, error text) and counts it."""
    try:
        value = fn()
    except PrepareError as err:
        metrics.CLAIMS.labels(op, err.kind).inc()
        log.error(
            f"{op} failed",
            extra={"claim": f"{claim.namespace}/{claim.name}", "uid": claim.uid, "error": str(err)},
        )
        return None, str(err)
    except Exception as err:  # an apiserver error, a bug: reported per claim, never a crash
        metrics.CLAIMS.labels(op, "internal").inc()
        log.exception(f"{op} failed", extra={"claim": f"{claim.namespace}/{claim.name}"})
        return None, f"{op} of claim {claim.namespace}/{claim.name}: {type(err).__name__}: {err}"
    metrics.CLAIMS.labels(op, "ok").inc()
    return value, ""


class DRAHandler:
    """Version-independent handling of one call's claims."""

    def __init__(self, preparer: Preparer) -> None:
        self.preparer = preparer

    def prepare(self, claims: Sequence[_ClaimMsg]) -> dict[str, tuple[list[PreparedDevice], str]]:
        out: dict[str, tuple[list[PreparedDevice], str]] = {}
        for c in claims:
            value, error = _outcome(
                partial(self.preparer.prepare, c.namespace, c.name, c.uid), "prepare", c
            )
            out[c.uid] = (value if isinstance(value, list) else [], error)
        metrics.PREPARED_CLAIMS.set(self.preparer.prepared_count())
        return out

    def unprepare(self, claims: Sequence[_ClaimMsg]) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in claims:
            _, error = _outcome(
                partial(self.preparer.unprepare, c.namespace, c.name, c.uid), "unprepare", c
            )
            out[c.uid] = error
        metrics.PREPARED_CLAIMS.set(self.preparer.prepared_count())
        return out


def _prepare_response(pb: Any, results: Mapping[str, tuple[list[Any], str]]) -> Any:
    """The NodePrepareResources answer in API module ``pb`` (v1 and v1beta1 are alike but
    for a device's ``share_id``: v1 only, set for a share of a device with capacity)."""
    share_ids = "share_id" in pb.Device.DESCRIPTOR.fields_by_name
    return pb.NodePrepareResourcesResponse(
        claims={
            uid: pb.NodePrepareResourceResponse(
                devices=[
                    pb.Device(
                        request_names=[d.request],
                        pool_name=d.pool,
                        device_name=d.device,
                        cdi_device_ids=[d.cdi_device_id],
                        **({"share_id": d.share_id} if d.share_id and share_ids else {}),
                    )
                    for d in devices
                ],
                error=error,
            )
            for uid, (devices, error) in results.items()
        }
    )


def _unprepare_response(pb: Any, errors: Mapping[str, str]) -> Any:
    return pb.NodeUnprepareResourcesResponse(
        claims={uid: pb.NodeUnprepareResourceResponse(error=e) for uid, e in errors.items()}
    )


class DRAPluginV1(v1_grpc.DRAPluginServicer):
    def __init__(self, handler: DRAHandler) -> None:
        self.handler = handler

    def NodePrepareResources(
        self, request: v1.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> v1.NodePrepareResourcesResponse:
        with metrics.CALL_SECONDS.labels("prepare", "v1").time():
            out: v1.NodePrepareResourcesResponse = _prepare_response(
                v1, self.handler.prepare(list(request.claims))
            )
            return out

    def NodeUnprepareResources(
        self, request: v1.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> v1.NodeUnprepareResourcesResponse:
        with metrics.CALL_SECONDS.labels("unprepare", "v1").time():
            out: v1.NodeUnprepareResourcesResponse = _unprepare_response(
                v1, self.handler.unprepare(list(request.claims))
            )
            return out


class DRAPluginV1Beta1(v1beta1_grpc.DRAPluginServicer):
    def __init__(self, handler: DRAHandler) -> None:
        self.handler = handler

    def NodePrepareResources(
        self, request: v1beta1.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> v1beta1.NodePrepareResourcesResponse:
        with metrics.CALL_SECONDS.labels("prepare", "v1beta1").time():
            out: v1beta1.NodePrepareResourcesResponse = _prepare_response(
                v1beta1, self.handler.prepare(list(request.claims))
            )
            return out

    def NodeUnprepareResources(
        self, request: v1beta1.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> v1beta1.NodeUnprepareResourcesResponse:
        with metrics.CALL_SECONDS.labels("unprepare", "v1beta1").time():
            out: v1beta1.NodeUnprepareResourcesResponse = _unprepare_response(
                v1beta1, self.handler.unprepare(list(request.claims))
            )
            return out
