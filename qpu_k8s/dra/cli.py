"""``qpu-k8s dra-plugin``: run the DRA kubelet plugin on this node.

Every path is a flag with a ``QPU_K8S_*`` env fallback and the real kubelet default, so
tests point the driver at a temporary directory and the Helm chart sets env vars. SIGTERM
(and SIGINT) deregister from the kubelet, stop serving and exit 0; prepared claims stay
in the checkpoint for the next instance.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from qpu_k8s.core.flags import (
    add_common,
    add_config_map_flag,
    add_flag,
    namespaced_name,
    path_or_none,
)
from qpu_k8s.core.names import DRIVER_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--driver-name", DRIVER_NAME, "DRA driver name (also the device domain)")
    add_flag(parser, "--node-name", socket.gethostname(), "this node's name (the pool name)")
    add_flag(parser, "--config", "/etc/qpu-k8s/backends.yaml", "backend config file (ConfigMap)")
    add_config_map_flag(parser)
    add_flag(parser, "--credentials-dir", "/etc/qpu-k8s/credentials", "mounted credential Secrets")
    add_flag(parser, "--plugins-dir", "/var/lib/kubelet/plugins", "kubelet plugins directory")
    add_flag(
        parser, "--registry-dir", "/var/lib/kubelet/plugins_registry", "plugin registration dir"
    )
    add_flag(parser, "--cdi-dir", "/var/run/cdi", "CDI spec directory (tmpfs, root-only)")
    add_flag(parser, "--state-dir", "/var/lib/qpu-k8s/dra", "checkpoint directory")
    add_flag(
        parser,
        "--usage-namespace",
        "",
        "namespace of the QuantumUsage records written at each release ('' writes none)",
    )
    add_flag(parser, "--kubeconfig", None, "kubeconfig file; empty: in-cluster config")
    add_flag(parser, "--metrics-address", ":9102", "host:port of /metrics; empty disables")
    add_flag(
        parser,
        "--boot-id-file",
        "/proc/sys/kernel/random/boot_id",
        "file holding the boot ID (tests simulate a reboot by changing it)",
    )
    add_flag(
        parser,
        "--unhealthy",
        "withdraw",
        "unhealthy devices: withdraw (leave out of slices) or taint (NoSchedule DeviceTaint)",
    )
    add_flag(
        parser,
        "--device-model",
        "lanes",
        "lanes: one device per lane (1.34+); capacity: one device per QPU, its lanes as "
        "consumable capacity (DRAConsumableCapacity: 1.36+), a claim takes 1 lane or all",
    )
    add_flag(parser, "--api-version", "auto", "resource.k8s.io version: auto, v1 or v1beta1")
    add_flag(parser, "--resync-seconds", "30", "slice resync period", kind=float)
    add_flag(parser, "--target-refresh-seconds", "300", "calibration refresh period", kind=float)
    add_flag(parser, "--probe-timeout", "10", "deadline of a health probe, seconds", kind=float)
    add_flag(
        parser, "--acquire-timeout", "30", "deadline of one acquire/release, seconds", kind=float
    )
    add_flag(
        parser,
        "--claim-status",
        "true",
        "write status.devices of prepared claims (true/false; RBAC: resourceclaims/driver)",
    )
    add_flag(
        parser,
        "--acquire-before-bind",
        "false",
        "default of node-bound backends without acquireBeforeBind: acquire before the pod is "
        "bound (true/false; needs --claim-status and list/watch on resourceclaims)",
    )
    add_common(parser)


def _config(args: argparse.Namespace) -> object:
    # Heavy imports (grpc, qrmi, kubernetes) only when the command runs: --help stays fast.
    from qpu_k8s.resourceslices.policy import DeviceModel, UnhealthyMode

    from .agent import DraDriverConfig

    try:
        mode = UnhealthyMode(args.unhealthy)
    except ValueError:
        raise SystemExit(f"--unhealthy: {args.unhealthy!r}; use withdraw or taint") from None
    try:
        model = DeviceModel(args.device_model)
    except ValueError:
        raise SystemExit(f"--device-model: {args.device_model!r}; use lanes or capacity") from None
    if args.api_version not in ("auto", "v1", "v1beta1"):
        raise SystemExit(f"--api-version: {args.api_version!r}; use auto, v1 or v1beta1")
    creds = path_or_none(args.credentials_dir)
    claim_status = str(args.claim_status).strip().lower()
    if claim_status not in ("true", "false"):
        raise SystemExit(f"--claim-status: {args.claim_status!r}; use true or false")
    before_bind = str(args.acquire_before_bind).strip().lower()
    if before_bind not in ("true", "false"):
        raise SystemExit(f"--acquire-before-bind: {args.acquire_before_bind!r}; use true or false")
    try:
        config_map = namespaced_name("--config-map", args.config_map)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return DraDriverConfig(
        node_name=args.node_name,
        config_path=Path(args.config),
        config_map=config_map,
        plugins_dir=Path(args.plugins_dir),
        registry_dir=Path(args.registry_dir),
        cdi_dir=Path(args.cdi_dir),
        state_dir=Path(args.state_dir),
        credentials_dir=creds if creds and creds.is_dir() else None,
        kubeconfig=path_or_none(args.kubeconfig),
        driver_name=args.driver_name,
        boot_id_file=Path(args.boot_id_file),
        unhealthy=mode,
        device_model=model,
        api_version=args.api_version,
        resync_seconds=args.resync_seconds,
        target_refresh_seconds=args.target_refresh_seconds,
        probe_timeout=args.probe_timeout,
        acquire_timeout=args.acquire_timeout,
        metrics_address=args.metrics_address or "",
        claim_status=claim_status == "true",
        usage_namespace=args.usage_namespace or "",
        acquire_before_bind=before_bind == "true",
    )


def run(args: argparse.Namespace) -> int:
    from qpu_k8s.core import logs
    from qpu_k8s.node.runner import run_until_signalled

    from .agent import DraDriver, DraDriverConfig

    logs.setup(args.log_level, args.log_format)
    cfg = _config(args)
    assert isinstance(cfg, DraDriverConfig)
    return run_until_signalled(DraDriver(cfg), "dra-plugin")
