"""A fake DRA kubelet plugin for smoke.sh: it registers DRIVER with the kubelet and answers
NodePrepareResources with one CDI device per claim (the CDI spec itself is a static file that
smoke.sh writes to /var/run/cdi). It runs in the agents image and uses the project's
generated stubs only; it is a test double, not the project's driver.
"""

import os
import signal
import sys
import threading
from concurrent import futures

import grpc

from qpu_k8s.proto.dra.v1 import api_pb2 as dra
from qpu_k8s.proto.dra.v1 import api_pb2_grpc as dra_grpc
from qpu_k8s.proto.pluginregistration.v1 import api_pb2 as reg
from qpu_k8s.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc

DRIVER = os.environ.get("DRIVER", "smoke.example.com")
KUBELET = os.environ.get("KUBELET_DIR", "/var/lib/kubelet")
REG_SOCK = f"{KUBELET}/plugins_registry/{DRIVER}-reg.sock"
DRA_DIR = f"{KUBELET}/plugins/{DRIVER}"
DRA_SOCK = f"{DRA_DIR}/dra.sock"
CDI_KIND = f"{DRIVER}/device"


class Registration(reg_grpc.RegistrationServicer):
    def GetInfo(self, request, context):
        return reg.PluginInfo(
            type="DRAPlugin", name=DRIVER, endpoint=DRA_SOCK, supported_versions=["v1.DRAPlugin"]
        )

    def NotifyRegistrationStatus(self, request, context):
        print(
            f"registration: registered={request.plugin_registered} error={request.error!r}",
            flush=True,
        )
        return reg.RegistrationStatusResponse()


class Plugin(dra_grpc.DRAPluginServicer):
    def NodePrepareResources(self, request, context):
        out = dra.NodePrepareResourcesResponse()
        for claim in request.claims:
            print(f"prepare {claim.namespace}/{claim.name} ({claim.uid})", flush=True)
            out.claims[claim.uid].devices.append(
                dra.Device(
                    request_names=["dev"],
                    pool_name="smoke",
                    device_name="dev0",
                    cdi_device_ids=[f"{CDI_KIND}=dev0"],
                )
            )
        return out

    def NodeUnprepareResources(self, request, context):
        out = dra.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            print(f"unprepare {claim.namespace}/{claim.name}", flush=True)
            out.claims[claim.uid].error = ""
        return out


def main() -> int:
    os.makedirs(DRA_DIR, exist_ok=True)
    for path in (REG_SOCK, DRA_SOCK):
        if os.path.exists(path):
            os.unlink(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    dra_grpc.add_DRAPluginServicer_to_server(Plugin(), server)
    server.add_insecure_port(f"unix://{DRA_SOCK}")
    registrar = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    reg_grpc.add_RegistrationServicer_to_server(Registration(), registrar)
    registrar.add_insecure_port(f"unix://{REG_SOCK}")
    server.start()
    registrar.start()
    print(f"serving {DRIVER}: {REG_SOCK}, {DRA_SOCK}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    registrar.stop(0)
    server.stop(0)
    for path in (REG_SOCK, DRA_SOCK):
        if os.path.exists(path):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
