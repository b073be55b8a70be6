"""``qpu-k8s operator``: run the QuantumBackend operator (Kopf) against a cluster.

Every setting is a flag with a ``QPU_K8S_*`` environment fallback (the Helm chart sets the
env). Run it on a host against any kubeconfig, or in the cluster with its ServiceAccount.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from qpu_k8s.core.flags import add_common, add_flag, path_or_none
from qpu_k8s.core.names import DRIVER_NAME

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--kubeconfig", None, "kubeconfig file (default: in-cluster, then ~/.kube)")
    add_flag(
        parser,
        "--namespace",
        "qpu-system",
        "the operator's namespace: default for Secrets, home of the node ConfigMap",
    )
    add_flag(parser, "--node-config-map", "qpu-k8s-node-config", "ConfigMap for the node agents")
    add_flag(parser, "--driver-name", DRIVER_NAME, "DRA driver / DeviceClass / attribute domain")
    add_flag(
        parser,
        "--liveness-address",
        "http://0.0.0.0:8080/healthz",
        "Kopf liveness/readiness endpoint URL ('' disables)",
    )
    add_flag(parser, "--metrics-address", "0.0.0.0:9400", "Prometheus /metrics host:port")
    add_flag(parser, "--probe-timeout", "10", "deadline of each vendor call (s)", kind=float)
    add_flag(parser, "--probe-concurrency", "16", "probes running at once", kind=int)
    add_flag(
        parser,
        "--target-refresh-seconds",
        "300",
        "seconds between target() calls (calibration data); health every probe interval",
        kind=float,
    )
    add_flag(
        parser,
        "--status-refresh",
        "0",
        "min seconds between status writes that only move lastProbeTime (0: every probe)",
        kind=float,
    )
    add_flag(
        parser,
        "--deletion-grace",
        "120",
        "seconds a deletion waits for shared claims to be released before going on",
        kind=float,
    )
    add_flag(
        parser, "--dra", "auto", "shared claims and slices: auto (if the API has them), on, off"
    )
    add_flag(
        parser,
        "--unhealthy",
        "withdraw",
        "slices of a shared QPU that is not Ready: withdraw its devices, or taint them "
        "(NoSchedule; device taints are on by default from Kubernetes 1.36, GA in 1.37)",
    )
    add_flag(
        parser,
        "--device-model",
        "lanes",
        "devices of a shared QPU: lanes (one per lane) or capacity (one per QPU, its lanes as "
        "consumable capacity; needs DRAConsumableCapacity, 1.36+)",
    )
    add_flag(
        parser,
        "--peering",
        "",
        "Kopf peering name; empty runs standalone (one replica, Recreate: the default)",
    )
    add_flag(parser, "--priority", "0", "Kopf peering priority", kind=int)
    add_flag(
        parser,
        "--budgets",
        "on",
        "keep QuantumBudgets' status from the QuantumUsage records: on or off",
    )
    add_flag(
        parser,
        "--kueue-admission-check",
        "off",
        "serve Kueue's AdmissionCheck quantum.example.com/backend-online: on or off "
        "(needs Kueue's v1beta2 CRDs)",
    )
    add_flag(
        parser,
        "--backend-selector",
        "",
        "only QuantumBackends with these labels (k=v,k2); empty: all",
    )
    add_common(parser)


async def _main(args: argparse.Namespace) -> int:
    # Heavy imports (kopf, kubernetes, qrmi, pydantic models) only when the command runs.
    import kopf

    from qpu_k8s.operator.controller import Controller, OperatorConfig
    from qpu_k8s.operator.handlers import build_registry, make_settings
    from qpu_k8s.operator.kube import ApiStatusError, Connection, Kube
    from qpu_k8s.operator.slices import make_publisher

    conn = Connection.load(path_or_none(args.kubeconfig))
    kube = Kube(conn, timeout=max(10.0, args.probe_timeout))
    mode = str(args.dra).lower()
    if mode not in ("auto", "on", "off"):
        log.error("--dra must be auto, on or off", extra={"got": args.dra})
        return 2
    if args.unhealthy not in ("withdraw", "taint"):
        log.error("--unhealthy must be withdraw or taint", extra={"got": args.unhealthy})
        return 2
    if args.device_model not in ("lanes", "capacity"):
        log.error("--device-model must be lanes or capacity", extra={"got": args.device_model})
        return 2
    switches = {
        "--kueue-admission-check": str(args.kueue_admission_check).lower(),
        "--budgets": str(args.budgets).lower(),
    }
    for flag, value in switches.items():
        if value not in ("on", "off"):
            log.error(f"{flag} must be on or off", extra={"got": value})
            return 2
    dra = mode == "on"
    if mode == "auto":
        try:
            dra = await kube.dra_available()
        except ApiStatusError as err:
            log.warning(
                "cannot tell whether resource.k8s.io/v1 is served", extra={"error": str(err)}
            )
    cfg = OperatorConfig(
        namespace=args.namespace,
        node_config_map=args.node_config_map,
        driver=args.driver_name,
        probe_timeout=args.probe_timeout,
        probe_concurrency=args.probe_concurrency,
        target_refresh=args.target_refresh_seconds,
        status_refresh=args.status_refresh,
        deletion_grace=args.deletion_grace,
        dra=dra,
        metrics_address=args.metrics_address,
        backend_selector=args.backend_selector,
        unhealthy=args.unhealthy,
        device_model=args.device_model,
        kueue_admission_check=switches["--kueue-admission-check"] == "on",
        budgets=switches["--budgets"] == "on",
    )
    ctl = Controller(cfg, kube, slices=make_publisher(kube, cfg) if dra else None)
    try:
        await kopf.operator(
            registry=build_registry(ctl, conn),
            settings=make_settings(standalone=not args.peering, priority=args.priority),
            clusterwide=True,
            standalone=not args.peering,
            peering_name=args.peering or None,
            priority=args.priority,
            liveness_endpoint=args.liveness_address or None,
        )
    finally:
        kube.close()
    return 0


def run(args: argparse.Namespace) -> int:
    from qpu_k8s.core import logs

    logs.setup(args.log_level, args.log_format)
    if logging.getLogger().level > logging.DEBUG:
        # Kopf logs each event handler's success at info ("Handler 'backend' succeeded."):
        # a line per status write of every backend. Its warnings and errors stay.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(_main(args))
