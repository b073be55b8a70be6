"""Kubelet plugin registration (``pluginregistration.v1``) and the driver's socket names.

The kubelet's plugin watcher finds ``<registry dir>/<name>.sock``, calls ``GetInfo`` and then
talks to the endpoint it names; ``NotifyRegistrationStatus`` tells us whether it accepted.

Socket names allow a rolling update (two driver pods on a node at once, as the kubelet
supports since 1.33): each instance has its own id (the pod UID when running in a pod,
else random), so the names never collide and the old pod removing its sockets on exit
cannot take the new pod's away:

* registration: ``<registry dir>/<driver>-<id>-reg.sock``
* service:      ``<plugins dir>/<driver>/dra-<id>.sock``

Advertised services, newest first (the kubelet takes the first it knows):
``v1.DRAPlugin``, ``v1beta1.DRAPlugin``, and the health streams ``v1.DRAResourceHealth``,
``v1alpha1.DRAResourceHealth``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from qpu_k8s.dra import metrics
from qpu_k8s.proto.pluginregistration.v1 import api_pb2 as reg_pb2
from qpu_k8s.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SERVICES = (
    "v1.DRAPlugin",
    "v1beta1.DRAPlugin",
    "v1.DRAResourceHealth",
    "v1alpha1.DRAResourceHealth",
)


@dataclass(frozen=True)
class SocketPaths:
    registration: Path
    endpoint: Path


def instance_id(pod_uid: str | None = None) -> str:
    """A short id for this driver instance: the pod UID's first part, else random."""
    uid = pod_uid if pod_uid is not None else os.environ.get("POD_UID", "")
    cleaned = re.sub(r"[^a-z0-9]", "", uid.lower())[:12]
    return cleaned or secrets.token_hex(4)


def socket_paths(driver: str, plugins_dir: Path, registry_dir: Path, ident: str) -> SocketPaths:
    return SocketPaths(
        registration=registry_dir / f"{driver}-{ident}-reg.sock",
        endpoint=plugins_dir / driver / f"dra-{ident}.sock",
    )


class RegistrationService(reg_grpc.RegistrationServicer):
    """Answers the kubelet's plugin watcher; records whether registration succeeded."""

    def __init__(self, driver: str, endpoint: Path, services: tuple[str, ...] = SERVICES):
        self.driver = driver
        self.endpoint = endpoint
        self.services = services
        self._cond = threading.Condition()
        self.registered: bool | None = None
        self.error = ""

    def GetInfo(
        self, request: reg_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> reg_pb2.PluginInfo:
        return reg_pb2.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.driver,
            endpoint=str(self.endpoint),
            supported_versions=list(self.services),
        )

    def NotifyRegistrationStatus(
        self, request: reg_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg_pb2.RegistrationStatusResponse:
        with self._cond:
            self.registered = request.plugin_registered
            self.error = request.error
            self._cond.notify_all()
        metrics.REGISTERED.set(1 if request.plugin_registered else 0)
        if request.plugin_registered:
            log.info("registered with the kubelet", extra={"driver": self.driver})
        else:
            log.error(
                "the kubelet refused the registration",
                extra={"driver": self.driver, "error": request.error},
            )
        return reg_pb2.RegistrationStatusResponse()

    def wait_registered(self, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self.registered is not None, timeout)
            return bool(self.registered)
