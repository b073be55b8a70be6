"""Operator benchmark: 1000 QuantumBackends against the real 1.37 apiserver.

    python -m benchmarks.operator_bench [--count 1000] [--window 60] [--interval 60] [--dra]

Measured in one run, on this machine (the running ``hack/local-cluster`` cluster is reused
and left up; one is started and stopped when none runs):

1. floor: the bare API work reconciling cannot avoid, done by one client with 16 threads:
   create N QuantumBackends, patch N statuses, delete them.
2. the operator (``qpu-k8s operator`` as its own process, emulator backends: half IBM
   ``fake_manila`` through the Runtime API, half Pasqal ``EMU_MPS``, all probed through the
   real ``qrmi`` client): time from the first create until all N have a status for their
   generation, as a ratio to the floor's create + patch time.
3. the operator's resident memory (``VmRSS``/``VmHWM`` from ``/proc/<pid>/status``).
4. steady state: the operator's CPU over ``--window`` seconds while it keeps probing
   every backend every ``--interval`` seconds (``/proc/<pid>/stat`` utime+stime), and the
   probes it made in that window (from its /metrics).
5. deletion of all N (finalizers included) until none is left.

Without a built cluster or root, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from benchmarks.chartenv import chart_env
from benchmarks.report import Target, targets
from qpu_k8s.core.names import API_GROUP, API_VERSION, PLURAL
from qpu_k8s.emulator.server import Emulator, running_emulator
from qpu_k8s.operator import crd
from testsupport import cluster

GROUP, VERSION = API_GROUP, API_VERSION
LABEL = "qpu-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(pred: Callable[[], bool], within: float, what: str, every: float = 0.5) -> None:
    end = time.monotonic() + within
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}")
        time.sleep(every)  # polling the apiserver against a deadline


RATIO_LIMIT = 2.0
RSS_LIMIT_MIB = 150.0


def _not_measured(why: str) -> list[Target]:
    return [
        Target("operator: 1000 QuantumBackends Ready vs the API floor", "", f"<= {RATIO_LIMIT:g}x",
               None, why),
        Target("operator: RSS with 1000 QuantumBackends", "", f"<= {RSS_LIMIT_MIB:g} MiB", None,
               why),
        Target("operator: steady CPU", "", "reported", None, why),
    ]  # fmt: skip


@contextlib.contextmanager
def _cluster() -> Iterator[Path | None]:
    reason = cluster.unavailable_reason()
    if reason:
        print(f"operator benchmark skipped: {reason}")
        targets(_not_measured(f"skipped: {reason}"))
        yield None
        return
    # The session's lock keeps test runs off the cluster while 1000 backends are timed.
    with cluster.session() as lc:
        yield lc.kubeconfig


def _install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    body: Any = crd.crd()
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as err:
        if err.status != 409:
            raise
        current = ext.read_custom_resource_definition(crd.CRD_NAME)
        assert current.metadata is not None
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(crd.CRD_NAME, body)

    def served() -> bool:
        try:
            client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
        except ApiException:
            return False
        return True

    _wait(served, 60, "the QuantumBackend CRD", 0.1)


def _spec(emu: Emulator, i: int, interval: int) -> dict[str, Any]:
    if i % 2 == 0:
        return {
            "resourceId": "fake_manila",
            "type": "ibm-quantum-compute-service",
            "config": emu.ibm_config("fake_manila"),
            "credentialsSecretRef": {"name": "bench-creds"},
            "probeIntervalSeconds": interval,
        }
    return {
        "resourceId": "EMU_MPS",
        "type": "pasqal-cloud",
        "config": emu.pasqal_config("EMU_MPS"),
        "credentialsSecretRef": {"name": "bench-creds"},
        "probeIntervalSeconds": interval,
    }


def _body(name: str, spec: dict[str, Any], run: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QuantumBackend",
        "metadata": {"name": name, "labels": {LABEL: run}},
        "spec": spec,
    }


class Objects:
    def __init__(self, api: client.ApiClient, run: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.run = run

    def items(self) -> list[dict[str, Any]]:
        out: Any = self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=f"{LABEL}={self.run}"
        )
        return list(out.get("items", []))

    def create(self, bodies: list[dict[str, Any]], pool: ThreadPoolExecutor) -> float:
        t0 = time.perf_counter()
        list(
            pool.map(
                lambda b: self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, b),
                bodies,
            )
        )
        return time.perf_counter() - t0

    def patch_status(self, names: list[str], pool: ThreadPoolExecutor) -> float:
        def one(name: str) -> None:
            self.custom.patch_cluster_custom_object_status(
                GROUP,
                VERSION,
                PLURAL,
                name,
                {"status": {"state": "floor", "observedGeneration": 1}},
                _content_type="application/merge-patch+json",
            )

        t0 = time.perf_counter()
        list(pool.map(one, names))
        return time.perf_counter() - t0

    def delete_all(self, names: list[str], pool: ThreadPoolExecutor) -> None:
        def one(name: str) -> None:
            with contextlib.suppress(ApiException):
                self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

        list(pool.map(one, names))

    def strip_finalizers(self, pool: ThreadPoolExecutor) -> None:
        def one(obj: dict[str, Any]) -> None:
            with contextlib.suppress(ApiException):
                self.custom.patch_cluster_custom_object(
                    GROUP,
                    VERSION,
                    PLURAL,
                    obj["metadata"]["name"],
                    {"metadata": {"finalizers": []}},
                )

        list(pool.map(one, self.items()))


def _reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("observedGeneration") == obj["metadata"].get("generation") and any(
        c.get("type") == "Ready" and c.get("reason") not in (None, "Probing")
        for c in status.get("conditions") or []
    )


def _proc(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, VmRSS kB, VmHWM kB) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
    mem = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return cpu, int(mem["VmRSS"].split()[0]), int(mem["VmHWM"].split()[0])


def _metric(metrics_port: int, name: str) -> float:
    """Sum of every series of one counter on the operator's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    pattern = "^" + re.escape(name) + r"(?:\{[^}]*\})? ([0-9.e+]+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def _api_requests() -> Counter[str]:
    """The apiserver's own request counts by verb and resource (``apiserver_request_total``).

    Every client is counted, so the difference over the reconcile phase is the operator's
    requests plus the benchmark's creates and whatever the cluster's controllers did.
    """
    text = subprocess.run(
        [str(cluster.kubectl_path()), "--kubeconfig", str(cluster.kubeconfig_path()),
         "get", "--raw", "/metrics"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    out: Counter[str] = Counter()
    for m in re.finditer(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        what = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        out[f"{labels.get('verb')} {what}"] += int(float(m.group(2)))
    return out


def _probes(metrics_port: int) -> float:
    return _metric(metrics_port, "qpu_k8s_operator_probes_total")


def run(args: argparse.Namespace) -> int:
    with _cluster() as kubeconfig:
        if kubeconfig is None:
            return 0
        api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        api.configuration.connection_pool_maxsize = 32
        _install_crd(api)
        core = client.CoreV1Api(api)
        run_id = uuid.uuid4().hex[:8]
        ns = f"qpu-bench-{run_id}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        pool = ThreadPoolExecutor(16)
        floor_objs = Objects(api, f"floor-{run_id}")
        objs = Objects(api, run_id)
        proc: subprocess.Popen[bytes] | None = None
        names = [f"bench-{run_id}-{i:05d}" for i in range(args.count)]
        results: dict[str, Any] = {}
        try:
            with running_emulator(noise=False) as emu:
                creds = {**emu.ibm_credentials(), **emu.pasqal_credentials()}
                core.create_namespaced_secret(
                    ns,
                    client.V1Secret(
                        metadata=client.V1ObjectMeta(name="bench-creds"),
                        data={k: base64.b64encode(v.encode()).decode() for k, v in creds.items()},
                    ),
                )
                # 1. floor
                fnames = [f"floor-{run_id}-{i:05d}" for i in range(args.count)]
                results["floor_create"] = floor_objs.create(
                    [
                        _body(n, _spec(emu, i, args.interval), f"floor-{run_id}")
                        for i, n in enumerate(fnames)
                    ],
                    pool,
                )
                results["floor_patch"] = floor_objs.patch_status(fnames, pool)
                t0 = time.perf_counter()
                floor_objs.delete_all(fnames, pool)
                results["floor_delete"] = time.perf_counter() - t0

                # 2. the operator
                metrics_port = _free_port()
                cmd = [
                    sys.executable,
                    "-m",
                    "qpu_k8s.cli",
                    "operator",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--namespace",
                    ns,
                    "--node-config-map",
                    "bench-node-config",
                    "--backend-selector",
                    f"{LABEL}={run_id}",
                    "--metrics-address",
                    f"127.0.0.1:{metrics_port}",
                    "--liveness-address",
                    "",
                    "--probe-timeout",
                    "10",
                    "--probe-concurrency",
                    str(args.concurrency),
                    "--dra",
                    "on" if args.dra else "off",
                    "--status-refresh",
                    str(args.status_refresh),
                    "--log-level",
                    "warning",
                ]
                if args.profile:
                    cmd[1:3] = ["-m", "cProfile", "-o", str(args.profile), "-m", "qpu_k8s.cli"]
                results["env"] = chart_env("operator")
                env = {**os.environ, **results["env"]}
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
                )
                _wait(lambda: _ready(metrics_port), 60, "operator metrics endpoint", 0.2)
                idle_rss = _proc(proc.pid)[1]
                requests0 = _api_requests()
                busy0 = _proc(proc.pid)[0]
                t0 = time.perf_counter()
                results["create"] = objs.create(
                    [_body(n, _spec(emu, i, args.interval), run_id) for i, n in enumerate(names)],
                    pool,
                )
                _wait(
                    lambda: sum(map(_reconciled, objs.items())) == args.count,
                    900,
                    "all reconciled",
                    1.0,
                )
                results["reconciled"] = time.perf_counter() - t0
                results["reconcile_cpu"] = (
                    100 * (_proc(proc.pid)[0] - busy0) / results["reconciled"]
                )
                results["requests"] = _api_requests() - requests0
                results["probe_mean"] = _metric(
                    metrics_port, "qpu_k8s_operator_probe_duration_seconds_sum"
                ) / max(1.0, _metric(metrics_port, "qpu_k8s_operator_probe_duration_seconds_count"))
                if args.dra:
                    _wait(
                        lambda: (
                            _metric(metrics_port, "qpu_k8s_operator_slice_writes_total")
                            >= args.count
                        ),
                        900,
                        "every shared backend's slice",
                        1.0,
                    )
                    results["sliced"] = time.perf_counter() - t0
                cpu0, rss, hwm = _proc(proc.pid)
                results["ready"] = sum(
                    1
                    for o in objs.items()
                    for c in (o.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready" and c.get("status") == "True"
                )
                # 4. steady state
                p0, w0 = _probes(metrics_port), time.perf_counter()
                cpu0 = _proc(proc.pid)[0]
                time.sleep(args.window)  # measuring CPU over a fixed window, not synchronising
                cpu1, rss1, hwm1 = _proc(proc.pid)
                wall = time.perf_counter() - w0
                results["steady_cpu"] = 100 * (cpu1 - cpu0) / wall
                results["steady_probes"] = (_probes(metrics_port) - p0) / wall
                results.update(idle_rss=idle_rss, rss=rss, rss_steady=rss1, hwm=max(hwm, hwm1))
                # 5. deletion through the finalizer
                t0 = time.perf_counter()
                objs.delete_all(names, pool)
                _wait(lambda: not objs.items(), 600, "all deleted", 1.0)
                results["delete"] = time.perf_counter() - t0
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            objs.strip_finalizers(pool)
            objs.delete_all([o["metadata"]["name"] for o in objs.items()], pool)
            floor_objs.delete_all([o["metadata"]["name"] for o in floor_objs.items()], pool)
            with contextlib.suppress(ApiException):
                core.delete_namespace(ns)
            pool.shutdown()
        _report(args, results)
    return 0


def _ready(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return False
    return True


def _report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    n = args.count
    floor = r["floor_create"] + r["floor_patch"]
    rows = [
        (
            "floor: create N (16 threads)",
            f"{r['floor_create']:.1f} s",
            f"{n / r['floor_create']:.0f}/s",
        ),
        ("floor: patch N statuses", f"{r['floor_patch']:.1f} s", f"{n / r['floor_patch']:.0f}/s"),
        ("floor: delete N (no finalizer)", f"{r['floor_delete']:.1f} s", ""),
        ("create N (operator running)", f"{r['create']:.1f} s", ""),
        (
            "first create -> all reconciled",
            f"{r['reconciled']:.1f} s",
            f"x{r['reconciled'] / floor:.2f} floor",
        ),
        ("  of which Ready=True", f"{r['ready']}/{n}", ""),
        ("  operator CPU meanwhile (of one core)", f"{r['reconcile_cpu']:.0f} %", ""),
        *(
            [("first create -> all slices published", f"{r['sliced']:.1f} s", "")]
            if "sliced" in r
            else []
        ),
        (
            "operator RSS idle / after N / steady",
            f"{r['idle_rss'] / 1024:.0f} / {r['rss'] / 1024:.0f} / "
            f"{r['rss_steady'] / 1024:.0f} MiB",
            f"peak {r['hwm'] / 1024:.0f} MiB",
        ),
        (
            f"steady CPU ({n} backends, every {args.interval} s)",
            f"{r['steady_cpu']:.1f} %",
            f"{r['steady_probes']:.1f} probes/s",
        ),
        ("delete N (finalizers) -> none left", f"{r['delete']:.1f} s", ""),
    ]
    rows.append(("  probe (health + target), mean", f"{r['probe_mean']:.3f} s",
                 f"--probe-concurrency {args.concurrency}"))  # fmt: skip
    for what, count in r["requests"].most_common():
        if count >= n // 10:
            rows.append((f"  API: {what}", f"{count}", f"{count / n:.2f} per backend"))
    width = max(len(a) for a, _, _ in rows)
    print(
        f"\noperator benchmark: {n} QuantumBackends, real 1.37 apiserver, emulator backends, "
        f"dra={'on' if args.dra else 'off'}, status-refresh={args.status_refresh:g} s, "
        f"{os.cpu_count()} CPUs; environment from the chart: {r.get('env')}"
    )
    for a, b, c in rows:
        print(f"  {a:<{width}}  {b:>22}  {c}")
    ratio = r["reconciled"] / floor
    peak = r["hwm"] / 1024
    targets(
        [
            Target(
                f"operator: {n} QuantumBackends Ready vs the API floor",
                f"{ratio:.2f}x ({r['reconciled']:.1f} s; {r['ready']}/{n} Ready)",
                f"<= {RATIO_LIMIT:g}x",
                ratio <= RATIO_LIMIT and r["ready"] == n,
                f"the operator used {r['reconcile_cpu']:.0f} % of a core meanwhile (CPU-bound: "
                "kopf's per-event processing; a qrmi object built per probe past the 32 kept)",
            ),
            Target(
                f"operator: RSS with {n} QuantumBackends",
                f"{r['rss_steady'] / 1024:.0f} MiB (peak {peak:.0f} MiB)",
                f"<= {RSS_LIMIT_MIB:g} MiB",
                peak <= RSS_LIMIT_MIB,
            ),
            Target(
                "operator: steady CPU",
                f"{r['steady_cpu']:.1f} % ({r['steady_probes']:.1f} probes/s)",
                "reported",
                None,
            ),
        ]
    )


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so the cleanup in run() happens


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--window", type=float, default=60.0, help="steady-state CPU window (s)")
    p.add_argument("--interval", type=int, default=60, help="probeIntervalSeconds of each backend")
    p.add_argument("--concurrency", type=int, default=16, help="operator --probe-concurrency")
    p.add_argument("--dra", action="store_true", help="also publish cluster-wide slices")
    p.add_argument("--profile", type=Path, help="run the operator under cProfile, stats to FILE")
    p.add_argument(
        "--status-refresh",
        type=float,
        default=0.0,
        help="operator --status-refresh (0: status written on every probe)",
    )
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
