"""``qpu-k8s demo``: the paper's QPU lifecycle end to end on the local emulator (WIP)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-pulser", action="store_true", help="only run the Qiskit example")


def run(args: argparse.Namespace) -> int:
    del args
    return 2
