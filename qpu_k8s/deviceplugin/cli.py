"""``qpu-k8s device-plugin``: the kubelet device plugin for ``quantum.example.com/qpu``.

Every path is a flag with an env fallback (``QPU_K8S_<FLAG>``) defaulting to the real
kubelet location, so tests and the demo point it at a temporary directory. SIGTERM/SIGINT
stop it cleanly: it stops serving and keeps every acquisition a running pod still holds
(the checkpoint in ``--state-dir`` carries them to the next start).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qpu_k8s.core.flags import add_common, add_config_map_flag, add_flag, namespaced_name
from qpu_k8s.core.names import RESOURCE_NAME


def _bool(flag: str, value: str) -> bool:
    low = str(value).strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{flag}: expected true or false, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser,
        "--device-plugin-dir",
        "/var/lib/kubelet/device-plugins",
        "kubelet device-plugin directory: our socket is served here, kubelet.sock is in it",
    )
    add_flag(
        parser,
        "--pod-resources-socket",
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        "kubelet PodResources API socket (finds ended pods to release their QPUs)",
    )
    add_flag(
        parser,
        "--state-dir",
        "/var/lib/qpu-k8s/device-plugin",
        "directory of the acquisitions checkpoint (must survive plugin restarts)",
    )
    add_flag(parser, "--config", "/etc/qpu-k8s/backends.yaml", "backend config file (reloaded)")
    add_config_map_flag(parser)
    add_flag(
        parser,
        "--credentials-dir",
        "/etc/qpu-k8s/credentials",
        "mounted Secrets with vendor credentials: <dir>/<secret name>/<KEY>",
    )
    add_flag(parser, "--resource-name", RESOURCE_NAME, "extended resource name to register")
    add_flag(parser, "--node-name", "", "this node's name (reads its labels from the apiserver)")
    add_flag(
        parser,
        "--node-labels",
        "",
        "this node's labels as k=v,k2=v2, for node-bound backends (override apiserver labels)",
    )
    add_flag(parser, "--kubeconfig", "", "kubeconfig for reading the Node (default: in-cluster)")
    add_flag(
        parser,
        "--include-shared",
        "true",
        "offer shared (network/cloud) backends on this node too: true or false",
    )
    add_flag(parser, "--metrics-address", ":9400", "host:port for /metrics ('' disables)")
    add_flag(
        parser,
        "--usage-namespace",
        "",
        "namespace of the QuantumUsage records written at each release ('' writes none)",
    )
    add_flag(parser, "--probe-timeout", "10", "deadline of one health probe, seconds", kind=float)
    add_flag(
        parser, "--acquire-timeout", "30", "deadline of one acquire/release, seconds", kind=float
    )
    add_flag(parser, "--reconcile-interval", "2", "seconds between PodResources checks", kind=float)
    add_flag(
        parser,
        "--release-grace",
        "10",
        "seconds a container must be gone from PodResources before its QPU is released",
        kind=float,
    )
    add_flag(
        parser,
        "--kubelet-restart-hold",
        "30",
        "seconds without releases after a kubelet restart (its pod list is being rebuilt)",
        kind=float,
    )
    add_flag(
        parser, "--config-reload-interval", "2", "seconds between config file checks", kind=float
    )
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    # Heavy imports (grpc, qrmi, pydantic models) only when the command runs.
    from qpu_k8s.core import logs
    from qpu_k8s.deviceplugin.agent import DevicePlugin, DevicePluginConfig
    from qpu_k8s.node.labels import NodeLabelsError, parse_labels
    from qpu_k8s.node.runner import run_until_signalled

    logs.setup(args.log_level, args.log_format)
    try:
        labels = parse_labels(args.node_labels or "")
        include_shared = _bool("--include-shared", args.include_shared)
        config_map = namespaced_name("--config-map", args.config_map)
    except (NodeLabelsError, ValueError) as err:
        print(f"qpu-k8s device-plugin: {err}", file=sys.stderr)
        return 2
    cfg = DevicePluginConfig(
        device_plugin_dir=Path(args.device_plugin_dir),
        pod_resources_socket=Path(args.pod_resources_socket),
        state_dir=Path(args.state_dir),
        config=Path(args.config),
        config_map=config_map,
        credentials_dir=Path(args.credentials_dir) if args.credentials_dir else None,
        resource_name=args.resource_name,
        node_name=args.node_name or "",
        node_labels=labels,
        kubeconfig=args.kubeconfig or None,
        include_shared=include_shared,
        metrics_address=args.metrics_address or "",
        probe_timeout=args.probe_timeout,
        acquire_timeout=args.acquire_timeout,
        reconcile_interval=args.reconcile_interval,
        release_grace=args.release_grace,
        restart_hold=args.kubelet_restart_hold,
        config_reload_interval=args.config_reload_interval,
        usage_namespace=args.usage_namespace or "",
    )
    try:
        agent = DevicePlugin(cfg)
    except ValueError as err:
        print(f"qpu-k8s device-plugin: {err}", file=sys.stderr)
        return 2
    return run_until_signalled(agent, "device-plugin")
