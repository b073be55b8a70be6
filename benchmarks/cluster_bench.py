"""Cluster benchmark: what a QPU adds to a pod's start on the real Kubernetes 1.37.

    python -m benchmarks.cluster_bench [--rounds 5] [--keep]

On the local cluster of ``hack/local-cluster`` (brought up when none runs, stopped again
at the end unless ``--keep``; the project images are rebuilt from this checkout first when
their content changed), with the chart installed as the README does it (local images, the
in-cluster emulator as the vendor), three pods are started one after the other in each
round, the same busybox container each time:

1. ``no QPU``: the floor (scheduling, sandbox, network, container start);
2. ``device plugin``: ``quantum.example.com/qpu: 1``: the kubelet calls our Allocate,
   which acquires the QPU (opens an IBM Runtime session at the emulator);
3. ``DRA claim``: a claim from a template selecting ``fake_manila``: the real scheduler
   allocates it, the kubelet calls our NodePrepareResources (acquire + CDI spec) and
   containerd applies the CDI env.

Measured: wall time from the create call to the watch event that shows the pod Running
(client side, both on this machine), and for each QPU pod the duration of our agent's call
from its own metrics (``qpu_k8s_deviceplugin_allocate_duration_seconds``,
``qpu_k8s_dra_call_duration_seconds{operation="prepare"}``: the difference of ``_sum``
before and after the pod, one call each). Each pod is deleted, and its QPU released,
before the next starts. Medians over the rounds; the ratio is to the no-QPU floor of the
same run. Without root or a built cluster it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from testsupport import cluster
from testsupport import release as rel

VARIANTS = ("no QPU", "device plugin", "DRA claim")
MANILA = 'device.attributes["qpu.quantum.example.com"].resourceId == "fake_manila"'


@dataclass
class Series:
    startup: list[float] = field(default_factory=list)
    agent: list[float] = field(default_factory=list)


def _metric_sum(text: str, name: str, labels: str = "") -> float:
    """The ``_sum`` sample of a histogram (with those labels, when given)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(f"{name}_sum"):
            continue
        if labels and labels not in line:
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


def _agent_seconds(release: rel.Release, variant: str) -> float:
    if variant == "device plugin":
        return _metric_sum(
            release.metrics("device-plugin", 9401), "qpu_k8s_deviceplugin_allocate_duration_seconds"
        )
    if variant == "DRA claim":
        return _metric_sum(
            release.metrics("dra", 9402), "qpu_k8s_dra_call_duration_seconds", 'operation="prepare"'
        )
    return 0.0


def _pod(name: str, variant: str) -> dict[str, Any]:
    if variant == "device plugin":
        return rel.pod(name, limits={rel.RESOURCE: 1})
    if variant == "DRA claim":
        return rel.pod(name, claims={"qpu": {"resourceClaimTemplateName": "manila"}})
    return rel.pod(name)


def _time_to_running(api: Any, namespace: str, body: dict[str, Any]) -> float:
    """Seconds from the create call to the watch event that shows the pod Running."""
    from kubernetes import client, watch

    core: Any = client.CoreV1Api(api)
    name = body["metadata"]["name"]
    start = time.perf_counter()
    created = core.create_namespaced_pod(namespace, body)
    w: Any = watch.Watch()  # type: ignore[no-untyped-call]
    try:
        for event in w.stream(
            core.list_namespaced_pod,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=created.metadata.resource_version,
            timeout_seconds=300,
        ):
            phase = event["object"].status.phase
            if phase == "Running":
                return time.perf_counter() - start
            if phase in ("Failed", "Succeeded"):
                raise RuntimeError(f"pod {name} ended {phase} before running")
    finally:
        w.stop()
    raise TimeoutError(f"pod {name} not Running within 300 s")


def _delete(lc: cluster.LocalCluster, release: rel.Release, namespace: str, name: str) -> None:
    lc.kubectl("-n", namespace, "delete", "pod", name, "--wait=true", "--timeout=120s")
    # The next round starts with every lane free and no claim left.
    cluster.wait_until(
        lambda: (
            release.allocatable() == 3
            and not lc.kubectl(
                "-n", namespace, "get", "resourceclaims", "-o", "name"
            ).stdout.strip()
        ),
        120,
        "the QPU released",
        every=0.5,
    )


@contextlib.contextmanager
def _release(keep: bool) -> Iterator[tuple[cluster.LocalCluster, rel.Release] | None]:
    from testsupport import tools

    reason = cluster.unavailable_reason()
    if reason:
        print(f"cluster benchmark skipped: {reason}")
        yield None
        return
    with cluster.session(helm_bin=tools.helm()) as lc:
        installed = rel.install(lc)
        try:
            cluster.wait_until(
                lambda: installed.allocatable() == 3,
                300,
                "the device plugin to advertise the emulator's 3 lanes",
                every=2.0,
            )
            yield lc, installed
        finally:
            if not keep and not cluster.reuse_requested():
                rel.uninstall(lc)


def run(rounds: int, keep: bool) -> int:
    if keep:
        os.environ["QPU_K8S_REUSE_CLUSTER"] = "1"  # testsupport.cluster then leaves it up
    with _release(keep) as got:
        if got is None:
            return 0
        lc, release = got
        ns = f"cluster-bench-{uuid.uuid4().hex[:6]}"
        lc.kubectl("create", "namespace", ns)
        cluster.wait_until(
            lambda: (
                lc.kubectl("-n", ns, "get", "serviceaccount", "default", check=False).returncode
                == 0
            ),
            60,
            "the namespace's default ServiceAccount",
        )
        lc.apply([rel.claim_template("manila", MANILA)], "-n", ns)
        api = lc.api()
        series = {v: Series() for v in VARIANTS}
        try:
            # One warm-up round (image layers in the page cache, the agents' first calls).
            for r in range(rounds + 1):
                for variant in VARIANTS:
                    name = f"{re.sub(r'[^a-z]+', '-', variant.lower())}-{r}"
                    before = _agent_seconds(release, variant)
                    took = _time_to_running(api, ns, _pod(name, variant))
                    agent = _agent_seconds(release, variant) - before
                    _delete(lc, release, ns, name)
                    if r == 0:
                        continue
                    series[variant].startup.append(took)
                    series[variant].agent.append(agent)
        finally:
            api.close()
            lc.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    _print(series, rounds)
    return 0


def _print(series: dict[str, Series], rounds: int) -> None:
    floor = statistics.median(series["no QPU"].startup)
    print(
        f"cluster benchmark: Kubernetes {cluster.K8S_VERSION} (hack/local-cluster), chart with "
        f"the in-cluster emulator; median of {rounds} rounds (+1 warm-up), busybox pods, "
        "create -> Running\n"
    )
    print(
        f"{'pod':<16} {'create->Running':>16} {'min..max':>15} {'vs no QPU':>10} "
        f"{'extra':>9} {'our agent call':>15} {'agent share of extra':>21}"
    )
    for variant in VARIANTS:
        s = series[variant]
        med = statistics.median(s.startup)
        extra = med - floor
        agent = statistics.median(s.agent) if variant != "no QPU" else 0.0
        share = f"{agent / extra:.0%}" if variant != "no QPU" and extra > 0 else "-"
        call = {"device plugin": "Allocate", "DRA claim": "Prepare"}.get(variant, "")
        spread = f"{min(s.startup) * 1e3:.0f}..{max(s.startup) * 1e3:.0f}"
        agent_text = f"{call} {agent * 1e3:.0f} ms" if call else "-"
        print(
            f"{variant:<16} {med * 1e3:>13.0f} ms {spread:>15} {med / floor:>9.2f}x "
            f"{extra * 1e3:>6.0f} ms {agent_text:>15} {share:>21}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_bench", description=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (after one warm-up)")
    p.add_argument(
        "--keep", action="store_true", help="leave the chart installed (and a cluster up)"
    )
    args = p.parse_args(argv)
    return run(args.rounds, args.keep)


if __name__ == "__main__":
    sys.exit(main())
