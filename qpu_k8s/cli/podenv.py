"""``qpu-k8s env``: run inside a pod to see which QPUs this container was given.

Prints the resources, types and which per-resource settings are present, masking every
value that could be a credential, so users can debug their job environment safely.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

from qpu_k8s.core.envcontract import DEFAULT_DELIMITER, TOKEN_KEY
from qpu_k8s.core.vendors import looks_secret


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def describe(environ: Mapping[str, str]) -> dict[str, object]:
    sep = environ.get("QRMI_LIST_DELIMITER", DEFAULT_DELIMITER)
    res = environ.get("QRMI_JOB_QPU_RESOURCES", environ.get("SLURM_JOB_QPU_RESOURCES", ""))
    typ = environ.get("QRMI_JOB_QPU_TYPES", environ.get("SLURM_JOB_QPU_TYPES", ""))
    names = res.split(sep) if res else []
    types = typ.split(sep) if typ else []
    out: list[dict[str, object]] = []
    for i, name in enumerate(names):
        keys = sorted(k.removeprefix(f"{name}_") for k in environ if k.startswith(f"{name}_"))
        settings = {
            k: ("***" if looks_secret(k) and k != TOKEN_KEY else environ[f"{name}_{k}"])
            for k in keys
        }
        out.append(
            {
                "name": name,
                "type": types[i] if i < len(types) else None,
                "acquired": TOKEN_KEY in keys,
                "settings": settings,
            }
        )
    return {"resources": out, "consistent": len(names) == len(types)}


def run(args: argparse.Namespace) -> int:
    info = describe(os.environ)
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    resources = info["resources"]
    assert isinstance(resources, list)
    if not resources:
        print("no QPU in this container's environment (QRMI_JOB_QPU_RESOURCES is empty)")
        return 1
    for r in resources:
        print(f"{r['name']} ({r['type']}): {'acquired' if r['acquired'] else 'NOT acquired'}")
        for k, v in r["settings"].items():
            print(f"  {k}={v}")
    return 0
