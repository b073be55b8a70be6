"""DRA driver benchmark: NodePrepareResources against the durability floor, from 1 to 1000
prepared claims on the node; the vendor's share.

    python -m benchmarks.dra_bench [--levels 1 10 100 1000] [--rounds 20] [--per-round 10]
        [--vendor-n 40] [--apiserver]

Measured in one run, floor and target alternated in rounds (:mod:`benchmarks.measure`):

1. the durability floor (``testsupport.grpc_floor.DurableFloor``): the same
   ``v1.DRAPlugin/NodePrepareResources`` method on the agents' own gRPC server class,
   answering a real response after one synced append of a record the size of the one a
   prepare syncs (the claim with its token).
2. NodePrepareResources of a new claim, vendor excluded: the real driver in this process
   (its gRPC server on a unix socket, its journal on disk, its CDI specs on tmpfs as
   ``/var/run/cdi`` is) with an *instant* QRMI client and claims served from memory, called
   with the same stub. The node holds 1, 10, 100, 1000 prepared claims; each measured claim
   is unprepared right after (timed apart), so the count stays.
3. the vendor: prepare with the real ``qrmi`` client against the local emulator, against
   the direct qrmi acquire.
4. ``--apiserver``: claims read from the running ``hack/local-cluster`` cluster
   (resource.k8s.io/v1 as 1.37 serves it) instead of memory (one GET more per prepare).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.measure import Compared, compare, timed
from benchmarks.profiling import Hot, hot_note, hot_table, profile_calls
from benchmarks.report import floor_targets, heading, ms, table, targets
from qpu_k8s.core import logs
from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.names import DRIVER_NAME
from qpu_k8s.core.qrmi_client import QuantumResourceClient, qrmi
from qpu_k8s.dra.agent import DraDriver, DraDriverConfig
from qpu_k8s.dra.claims import ClaimSource, KubeClaims
from qpu_k8s.dra.plugin import DRAHandler, DRAPluginV1
from qpu_k8s.emulator import Emulator, running_emulator
from qpu_k8s.fakekubelet import ClaimRef
from qpu_k8s.fakekubelet.common import unix_target
from qpu_k8s.proto.dra.v1 import api_pb2, api_pb2_grpc
from qpu_k8s.resourceslices.build import GROUP
from testsupport.dra import StaticClaims
from testsupport.grpc_floor import DurableFloor
from testsupport.instant_client import InstantClient

DRIVER = DRIVER_NAME
NODE = "bench-node"
PREPARE = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources"
PROBE = "ibm-manila"  # the backend whose lanes the measured claims take
PROBE_LANES = 4
FILL_LANES = 64  # lanes per backend that holds the node's prepared claims
# Synced appends of the untimed unprepare after each measured prepare (the claim dropped);
# the floor makes as many after each of its calls.
UNPREPARE_SYNCS = 1
ClientFactory = Callable[[QuantumBackend, Mapping[str, str]], QuantumResourceClient]


def _backend(emu: Emulator, name: str, lanes: int) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "resourceId": "fake_manila" if name == PROBE else name.replace("-", "_"),
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config("fake_manila"),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "access": "node-bound",
            "nodeSelector": {"bench": "yes"},
            "lanes": lanes,
        },
    }


def _layout(root: Path, emu: Emulator, fill_backends: int = 0) -> None:
    docs = [_backend(emu, PROBE, PROBE_LANES)]
    docs += [_backend(emu, f"fill-{i:02d}", FILL_LANES) for i in range(fill_backends)]
    (root / "backends.yaml").write_text(yaml.safe_dump({"backends": docs}))
    creds = root / "creds" / "ibm-creds"
    creds.mkdir(parents=True)
    for key, value in emu.ibm_credentials().items():
        (creds / key).write_text(value)
    (root / "boot_id").write_text(str(uuid.uuid4()))


def _claim(namespace: str, name: str, uid: str, device: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"devices": {"requests": [{"name": "qpu"}]}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "qpu", "driver": DRIVER, "pool": NODE, "device": device}
                    ],
                    "config": [],
                }
            }
        },
    }


def _prepare_request(ref: ClaimRef) -> api_pb2.NodePrepareResourcesRequest:
    return api_pb2.NodePrepareResourcesRequest(
        claims=[api_pb2.Claim(namespace=ref.namespace, uid=ref.uid, name=ref.name)]
    )


def _unprepare_request(ref: ClaimRef) -> api_pb2.NodeUnprepareResourcesRequest:
    return api_pb2.NodeUnprepareResourcesRequest(
        claims=[api_pb2.Claim(namespace=ref.namespace, uid=ref.uid, name=ref.name)]
    )


class _Node:
    """The in-process driver, its claims and its prepared ones."""

    def __init__(self, agent: DraDriver, claims: ClaimSource, make: Callable[[str], ClaimRef]):
        self.agent = agent
        self.claims = claims
        self.make = make  # a new allocated claim of a device
        self.channel = grpc.insecure_channel(unix_target(agent.paths.endpoint))
        stub = api_pb2_grpc.DRAPluginStub(self.channel)
        self.prepare, self.unprepare = stub.NodePrepareResources, stub.NodeUnprepareResources
        self.held = 0

    def prepare_ok(self, ref: ClaimRef) -> api_pb2.NodePrepareResourcesResponse:
        resp = self.prepare(_prepare_request(ref), timeout=30)
        error = resp.claims[ref.uid].error
        if error:
            raise RuntimeError(f"prepare failed: {error}")
        return resp

    def hold(self, count: int, devices: list[str]) -> None:
        """Bring the node to ``count`` prepared claims."""
        while self.held < count:
            self.prepare_ok(self.make(devices[self.held]))
            self.held += 1


@contextlib.contextmanager
def _node(
    emu: Emulator,
    root: Path,
    fill_backends: int,
    factory: ClientFactory | None,
    *,
    claims: ClaimSource | None = None,
    make: Callable[[str], ClaimRef] | None = None,
    kubeconfig: Path | None = None,
    keep_layout: bool = False,
) -> Iterator[_Node]:
    """The driver on ``root``; ``keep_layout``: a restart on the state of an earlier one."""
    if not keep_layout:
        _layout(root, emu, fill_backends)
    static = StaticClaims()
    counter = [0]

    def make_static(device: str) -> ClaimRef:
        counter[0] += 1
        uid, name = str(uuid.uuid4()), f"c{counter[0]}"
        static.put_claim(_claim("bench", name, uid, device))
        return ClaimRef("bench", uid, name)

    tmpfs = "/dev/shm" if Path("/dev/shm").is_dir() else None  # /var/run/cdi is tmpfs
    with tempfile.TemporaryDirectory(prefix="dra-cdi-", dir=tmpfs) as cdi:
        cfg = DraDriverConfig(
            node_name=NODE,
            config_path=root / "backends.yaml",
            plugins_dir=root / "plugins",
            registry_dir=root / "registry",
            cdi_dir=Path(cdi),
            state_dir=root / "state",
            credentials_dir=root / "creds",
            boot_id_file=root / "boot_id",
            node_labels={"bench": "yes"},
            kubeconfig=kubeconfig,
        )
        agent = DraDriver(
            cfg, claims=claims or static, client_factory=factory, publish_slices=False
        )
        agent.start()
        node = _Node(agent, claims or static, make or make_static)
        try:
            yield node
        finally:
            node.channel.close()
            agent.stop()


@dataclass
class Level:
    prepared: int
    compared: Compared
    unprepare: list[float]


def bench_growth(
    emu: Emulator,
    levels: list[int],
    rounds: int,
    per_round: int,
    factory: ClientFactory | None = InstantClient,
    **source: Any,
) -> tuple[list[Level], list[Hot]]:
    """NodePrepareResources vs the durability floor at each number of prepared claims, and
    the profile of the prepare handler at the last one."""
    fill = -(-max(levels) // FILL_LANES)
    with tempfile.TemporaryDirectory(prefix="dra-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        with _node(emu, root, fill, factory, **source) as node:
            devices = [f"fill-{b:02d}-lane-{i}" for b in range(fill) for i in range(FILL_LANES)]
            journal = root / "state" / "dra.journal"
            # One prepare to learn the real response and the synced record (a prepare
            # appends the intent, the claim with its token (synced), then PREPARED).
            ref = node.make(f"{PROBE}-lane-0")
            size = journal.stat().st_size
            sample = node.prepare_ok(ref)
            lines = journal.read_bytes()[size:].splitlines(keepends=True)
            record = next(line for line in lines if b'"token":"' in line)
            node.unprepare(_unprepare_request(ref), timeout=30)
            out = []
            sock = root / "floor.sock"
            with (
                DurableFloor(
                    sock,
                    PREPARE,
                    api_pb2.NodePrepareResourcesRequest,
                    response=sample,
                    record=record,
                    journal=root / "floor.j",
                ) as durable,
                grpc.insecure_channel(unix_target(sock)) as channel,
            ):
                floor_call = api_pb2_grpc.DRAPluginStub(channel).NodePrepareResources
                unprepared: list[float] = []
                step = [0]

                def floor() -> float:
                    request = _prepare_request(ref)
                    took = timed(lambda: floor_call(request, timeout=30))
                    durable.append_synced(UNPREPARE_SYNCS)
                    return took

                def target() -> float:
                    step[0] += 1
                    claim = node.make(f"{PROBE}-lane-{step[0] % PROBE_LANES}")
                    took = timed(lambda: node.prepare_ok(claim))
                    request = _unprepare_request(claim)
                    unprepared.append(timed(lambda: node.unprepare(request, timeout=30)))
                    return took

                for count in levels:
                    node.hold(count, devices)
                    unprepared.clear()
                    got = compare(floor, target, rounds=rounds, per_round=per_round)
                    assert node.agent.store is not None
                    out.append(Level(node.agent.store.prepared, got, list(unprepared)))
            assert node.agent.preparer is not None
            servicer = DRAPluginV1(DRAHandler(node.agent.preparer))
            claims = [node.make(f"{PROBE}-lane-0")]

            def handle() -> None:
                request = _prepare_request(claims[-1])
                servicer.NodePrepareResources(request, None)  # type: ignore[arg-type]

            def next_claim() -> None:  # unprofiled: unprepare, and the next claim's object
                node.unprepare(_unprepare_request(claims.pop()), timeout=30)
                step[0] += 1
                claims.append(node.make(f"{PROBE}-lane-{step[0] % PROBE_LANES}"))

            hot = profile_calls(handle, next_claim, 200)
    return out, hot


def bench_vendor(emu: Emulator, n: int) -> Compared:
    """Prepare with the real qrmi client vs the direct qrmi acquire, alternately."""
    direct = qrmi.QuantumResource.from_config(
        "fake_manila", qrmi.ResourceType.IBMQuantumComputeService, emu.qrmi_config("fake_manila")
    )

    def acquire_direct() -> float:
        start = time.perf_counter()
        token = direct.acquire()
        took = time.perf_counter() - start
        direct.release(token)
        return took

    with (
        tempfile.TemporaryDirectory(prefix="dra-bench-", dir="/tmp") as tmp,
        _node(emu, Path(tmp), 0, None) as node,
    ):
        step = [0]

        def prepare() -> float:
            step[0] += 1
            claim = node.make(f"{PROBE}-lane-{step[0] % PROBE_LANES}")
            took = timed(lambda: node.prepare_ok(claim))
            node.unprepare(_unprepare_request(claim), timeout=30)
            return took

        return compare(acquire_direct, prepare, rounds=max(1, n // 5), per_round=5, warmup=3)


def _apiserver_source() -> tuple[dict[str, Any], Callable[[], None]]:
    """Claims on the running local cluster (resource.k8s.io/v1 as Kubernetes 1.37 serves it)."""
    from kubernetes import client, config

    from testsupport import cluster

    kubeconfig = Path(os.environ.get("KUBECONFIG") or cluster.kubeconfig_path())
    if not cluster.is_running():
        reason = cluster.unavailable_reason() or "not running"
        raise SystemExit(f"--apiserver: no running local cluster ({reason}); run up.sh")
    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    ns = f"dra-bench-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    custom = client.CustomObjectsApi(api)
    counter = [0]

    def make(device: str) -> ClaimRef:
        counter[0] += 1
        name = f"c{counter[0]}"
        doc = _claim(ns, name, "", device)
        status = doc.pop("status")
        doc["metadata"] = {"name": name}
        doc["spec"]["devices"]["requests"] = [
            {"name": "qpu", "exactly": {"deviceClassName": DRIVER}}
        ]
        made = as_object(
            custom.create_namespaced_custom_object(GROUP, "v1", ns, "resourceclaims", doc)
        )
        made["status"] = status
        custom.replace_namespaced_custom_object_status(
            GROUP, "v1", ns, "resourceclaims", name, made
        )
        return ClaimRef(ns, made["metadata"]["uid"], name)

    def cleanup() -> None:
        core.delete_namespace(ns)
        api.close()

    return {"claims": KubeClaims(api), "make": make, "kubeconfig": kubeconfig}, cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dra_bench", description=__doc__)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--vendor-n", type=int, default=40, help="claims with real acquires")
    parser.add_argument(
        "--apiserver", action="store_true", help="also read claims from the running local cluster"
    )
    args = parser.parse_args(argv)

    heading("DRA driver: NodePrepareResources")
    # The driver in this process logs as deployed (info, JSON lines), to nowhere.
    logs.setup("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    with running_emulator(noise=False) as emu:
        levels, hot = bench_growth(emu, sorted(args.levels), args.rounds, args.per_round)
        vendor = bench_vendor(emu, args.vendor_n)
        api_level = None
        if args.apiserver:
            source, cleanup = _apiserver_source()
            try:
                api_level = bench_growth(emu, [1], args.rounds, args.per_round, **source)[0][0]
            finally:
                cleanup()

    n = args.rounds * args.per_round
    print(f"NodePrepareResources (instant vendor) vs the durability floor, {n} of each per row:\n")
    rows = [
        (lv.prepared, ms(lv.compared.floor_p50), ms(lv.compared.target_p50),
         f"{lv.compared.ratio:.2f}x", ms(lv.compared.excess), ms(statistics.median(lv.unprepare)))
        for lv in levels
    ]  # fmt: skip
    print(
        table(
            ["prepared claims", "floor p50", "prepare p50", "ratio", "above floor",
             "unprepare p50"],
            rows,
        )
    )  # fmt: skip
    print(
        f"\nWith the real vendor (real qrmi, emulator): direct qrmi acquire p50 "
        f"{ms(vendor.floor_p50)}, NodePrepareResources p50 {ms(vendor.target_p50)} "
        f"({vendor.ratio:.2f}x, {ms(vendor.excess)} above)."
    )
    if api_level is not None:
        print(
            f"\nClaims read from the apiserver: prepare p50 {ms(api_level.compared.target_p50)}, "
            f"{api_level.compared.ratio:.2f}x the floor (one GET more than the floor)."
        )
    print(
        f"\nWhere the NodePrepareResources handler spends its own time ({levels[-1].prepared} "
        "prepared; benchmarks/profiling.py):\n"
    )
    print(hot_table(hot))
    targets(
        floor_targets(
            "DRA: NodePrepareResources",
            [lv.compared.ratio for lv in levels],
            str(levels[0].prepared),
            f"{levels[-1].prepared} claims",
            hot_note(hot),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
