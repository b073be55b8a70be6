"""``qpu-k8s``: the console command, the demo and the offline helpers (validate, env)."""

from qpu_k8s.cli.commands import main

__all__ = ["main"]
