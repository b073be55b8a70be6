"""DRA driver benchmark: NodePrepareResources latency against a bare gRPC floor.

    python -m benchmarks.dra_bench [--n 300] [--vendor-n 40] [--apiserver]

Measured in one run, on this machine:

1. floor: a bare unary gRPC call over a unix socket (``testsupport.grpc_floor``:
   trivial servicer, same process, same client stack).
2. NodePrepareResources of a new claim, vendor acquire excluded: the real driver
   (in-process, real gRPC server on a unix socket, real checkpoint writes with fsync, real
   CDI spec write with fsync), claims served from memory, and an *instant* QRMI client
   whose acquire returns at once. What remains is our own work: claim lookup, parameter
   parsing, three atomic checkpoint writes (intent, token, prepared), env rendering, the
   CDI spec, gRPC. Also the repeat (idempotent) prepare and the unprepare.
3. The same prepare with the real ``qrmi`` client against the local emulator (IAM token +
   ``POST /sessions``), as a ratio to that acquire called directly.
4. ``--apiserver``: claims read from the real apiserver (the running ``hack/local-cluster``
   cluster, resource.k8s.io/v1 as 1.37 serves it) instead of memory; one GET per prepare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.names import DRIVER_NAME
from qpu_k8s.core.qrmi_client import CallTimeouts, QrmiClient, QuantumResourceClient
from qpu_k8s.dra.agent import DraDriver, DraDriverConfig
from qpu_k8s.dra.claims import ClaimSource, KubeClaims
from qpu_k8s.emulator import running_emulator
from qpu_k8s.fakekubelet import ClaimRef, FakeDRAKubelet
from qpu_k8s.resourceslices.build import GROUP
from testsupport.dra import StaticClaims
from testsupport.grpc_floor import LatencySummary, measure_unary_floor, summarize
from testsupport.instant_client import InstantClient

DRIVER = DRIVER_NAME
NODE = "bench-node"
API_KEY = "bench-apikey-0001"


def _layout(root: Path, emu: Any) -> None:
    backend = {
        "name": "ibm-manila",
        "spec": {
            "resourceId": "fake_manila",
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config("fake_manila"),
            "credentialsSecretRef": {"name": "ibm-creds"},
            "access": "node-bound",
            "nodeSelector": {"bench": "yes"},
            "lanes": 4,
        },
    }
    (root / "backends.yaml").write_text(yaml.safe_dump({"backends": [backend]}))
    (root / "creds" / "ibm-creds").mkdir(parents=True)
    (root / "creds" / "ibm-creds" / "QRMI_IBM_QCS_IAM_APIKEY").write_text(API_KEY)
    (root / "boot_id").write_text(str(uuid.uuid4()))


def _claim(namespace: str, name: str, uid: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"devices": {"requests": [{"name": "qpu"}]}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "request": "qpu",
                            "driver": DRIVER,
                            "pool": pool,
                            "device": "ibm-manila-lane-0",
                        }
                    ],
                    "config": [],
                }
            }
        },
    }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bench_prepare(  # noqa: PLR0917
    emu: Any,
    n: int,
    factory: Callable[[QuantumBackend, Mapping[str, str]], QuantumResourceClient] | None,
    claims: ClaimSource | None = None,
    make_claim: Callable[[int], ClaimRef] | None = None,
    kubeconfig: Path | None = None,
) -> dict[str, LatencySummary]:
    """Prepare (new claim), repeat prepare and unprepare latencies, ``n`` claims."""
    root = Path(tempfile.mkdtemp(prefix="dra-bench-", dir="/tmp"))
    try:
        _layout(root, emu)
        static = claims or StaticClaims()
        cfg = DraDriverConfig(
            node_name=NODE,
            config_path=root / "backends.yaml",
            plugins_dir=root / "plugins",
            registry_dir=root / "registry",
            cdi_dir=root / "cdi",
            state_dir=root / "state",
            credentials_dir=root / "creds",
            boot_id_file=root / "boot_id",
            node_labels={"bench": "yes"},
            kubeconfig=kubeconfig,
        )
        agent = DraDriver(cfg, claims=static, client_factory=factory, publish_slices=False)
        agent.start()
        refs: list[ClaimRef] = []
        for i in range(n + 20):
            if make_claim is not None:
                refs.append(make_claim(i))
            else:
                uid = str(uuid.uuid4())
                assert isinstance(static, StaticClaims)
                static.put_claim(_claim("bench", f"c{i}", uid, NODE))
                refs.append(ClaimRef("bench", uid, f"c{i}"))
        out: dict[str, list[float]] = {"prepare": [], "repeat": [], "unprepare": []}
        try:
            with FakeDRAKubelet(root / "registry") as kubelet:
                kubelet.wait_for_registration(DRIVER, timeout=30)
                client = kubelet.client(DRIVER)
                for i, ref in enumerate(refs):
                    call = [ref]
                    t, prepared = _timed(partial(client.node_prepare_resources, call))
                    if prepared[ref.uid].error:
                        raise RuntimeError(prepared[ref.uid].error)
                    r, _ = _timed(partial(client.node_prepare_resources, call))
                    u, _ = _timed(partial(client.node_unprepare_resources, call))
                    if i >= 20:  # warm-up
                        out["prepare"].append(t)
                        out["repeat"].append(r)
                        out["unprepare"].append(u)
        finally:
            agent.stop()
        return {k: summarize(v) for k, v in out.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_direct_acquire(emu: Any, n: int) -> LatencySummary:
    from qpu_k8s.core.model import parse_backend

    backend = parse_backend(
        {
            "name": "ibm-manila",
            "spec": {
                "resourceId": "fake_manila",
                "type": "ibm-quantum-compute-service",
                "config": emu.ibm_config("fake_manila"),
                "credentialsSecretRef": {"name": "ibm-creds"},
            },
        }
    )
    client = QrmiClient(
        backend, {"QRMI_IBM_QCS_IAM_APIKEY": API_KEY}, timeouts=CallTimeouts.uniform(30)
    )
    samples = []
    for i in range(n + 5):
        start = time.perf_counter()
        token = client.acquire()
        elapsed = time.perf_counter() - start
        client.release(token)
        if i >= 5:
            samples.append(elapsed)
    return summarize(samples)


def _apiserver_claims(
    n: int,
) -> tuple[KubeClaims, Callable[[int], ClaimRef], Path, Callable[[], None]]:
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

    def make(i: int) -> ClaimRef:
        doc = _claim(ns, f"c{i}", "", NODE)
        status = doc.pop("status")
        doc["metadata"] = {"name": f"c{i}"}
        doc["spec"]["devices"]["requests"] = [
            {"name": "qpu", "exactly": {"deviceClassName": DRIVER}}
        ]
        made = as_object(
            custom.create_namespaced_custom_object(
                "resource.k8s.io", "v1", ns, "resourceclaims", doc
            )
        )
        made["status"] = status
        custom.replace_namespaced_custom_object_status(
            GROUP, "v1", ns, "resourceclaims", f"c{i}", made
        )
        return ClaimRef(ns, made["metadata"]["uid"], f"c{i}")

    def cleanup() -> None:
        core.delete_namespace(ns)
        api.close()

    return KubeClaims(api), make, kubeconfig, cleanup


def _ms(x: float) -> str:
    return f"{x * 1000:.3f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dra_bench", description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="claims for the vendor-free runs")
    parser.add_argument("--vendor-n", type=int, default=40, help="claims with real acquires")
    parser.add_argument("--floor-n", type=int, default=2000, help="bare gRPC calls")
    parser.add_argument(
        "--apiserver", action="store_true", help="also read claims from the running local cluster"
    )
    args = parser.parse_args(argv)
    rows: list[tuple[str, LatencySummary, LatencySummary | None]] = []
    floor = summarize(measure_unary_floor(args.floor_n))
    rows.append(("bare gRPC unary call (floor)", floor, None))
    with running_emulator(api_keys=frozenset({API_KEY}), noise=False) as emu:
        own = bench_prepare(emu, args.n, InstantClient)
        rows.append(("NodePrepareResources, new claim (no vendor)", own["prepare"], floor))
        rows.append(("NodePrepareResources, repeat (idempotent)", own["repeat"], floor))
        rows.append(("NodeUnprepareResources (no vendor)", own["unprepare"], floor))
        direct = bench_direct_acquire(emu, args.vendor_n)
        rows.append(("qrmi acquire, direct (emulator)", direct, None))
        real = bench_prepare(emu, args.vendor_n, None)
        rows.append(("NodePrepareResources with real acquire", real["prepare"], direct))
        if args.apiserver:
            claims, make, kubeconfig, cleanup = _apiserver_claims(args.n)
            try:
                api_run = bench_prepare(emu, args.n, InstantClient, claims, make, kubeconfig)
            finally:
                cleanup()
            rows.append(("NodePrepareResources, claim from apiserver", api_run["prepare"], floor))
    print(f"DRA driver benchmark (cpus: {os.cpu_count()}, python {sys.version.split()[0]})")
    print(f"{'measurement':<46}{'n':>6}{'p50':>12}{'p99':>12}   ratio p50 / p99")
    for name, s, base in rows:
        ratio = f"   {s.p50 / base.p50:6.1f}x / {s.p99 / base.p99:6.1f}x" if base else ""
        print(f"{name:<46}{s.n:>6}{_ms(s.p50):>12}{_ms(s.p99):>12}{ratio}")
    print("ratios: driver calls vs the bare gRPC floor; prepare with a real acquire vs the")
    print("direct qrmi acquire (both against the emulator on 127.0.0.1).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
