"""Run a module as it runs in the agents' image: only the light stack importable.

    python -m benchmarks.lightstack MODULE [ARGS...]
    python -m benchmarks.lightstack --imports MODULE...   (prints the memory after importing)

The development venv also holds the test and emulator extras, and some libraries import
what they find (the Kubernetes client imports ``kubernetes_validate`` and with it
``jsonschema``); measured there, an agent's memory would include packages its image does
not have. This hides every installed distribution that is not in the closure of
qpu-k8s's own (extra-free) requirements, then runs ``MODULE`` as ``python -m`` would.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata as md
import json
import re
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType

from packaging.requirements import Requirement

PROJECT = "qpu-k8s"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def light_distributions() -> set[str]:
    """qpu-k8s and everything its requirements pull in, without extras."""
    seen: set[str] = set()
    todo = [PROJECT]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for raw in requires:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def hidden_modules() -> set[str]:
    """Top-level import names that only distributions outside the light stack provide."""
    light = light_distributions()
    out = set()
    for module, dists in md.packages_distributions().items():
        if not any(_norm(d) in light for d in dists):
            out.add(module)
    return out


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is not in the light stack", name=fullname)
        return None


def memory_now() -> dict[str, float]:
    """This process's resident memory and its anonymous part, in MiB."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f.read().splitlines()[1:]:
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "anon": fields["Anonymous"]}


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sys.meta_path.insert(0, _Hide(hidden_modules()))
    if sys.argv[1] == "--imports":
        for name in sys.argv[2:]:
            importlib.import_module(name)
        print(json.dumps(memory_now()))
        return
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
