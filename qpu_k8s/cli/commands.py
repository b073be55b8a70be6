"""``qpu-k8s``: one console command with a sub-command per job.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("qpu_k8s.cli.demo", "run the paper's QPU lifecycle end to end on the local emulator"),
    "emulator": ("qpu_k8s.emulator.cli", "serve the IBM Runtime and Pasqal cloud APIs locally"),
    "device-plugin": ("qpu_k8s.deviceplugin.cli", "run the kubelet device plugin"),
    "dra-plugin": ("qpu_k8s.dra.cli", "run the DRA kubelet plugin"),
    "operator": ("qpu_k8s.operator.cli", "run the QuantumBackend operator"),
    "validate": ("qpu_k8s.cli.validate", "validate QuantumBackend YAML files or a node config"),
    "env": ("qpu_k8s.cli.podenv", "pod-side: show the QPU job environment this container got"),
    "usage": ("qpu_k8s.cli.usage", "who used how much QPU in a period (QuantumUsage records)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qpu-k8s",
        description="Quantum computers as schedulable Kubernetes resources, over QRMI.",
    )
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        sub = subs.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sub)
        sub.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args._run(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
