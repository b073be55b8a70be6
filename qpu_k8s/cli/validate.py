"""``qpu-k8s validate``: check QuantumBackend YAML (CRs or a node config) before applying it.

Admins get the same field-naming errors the operator and the node agents would report,
without a cluster, and the same warning for a deprecated type (valid, but to be replaced:
the operator shows it as ``Degraded=True``, reason ``DeprecatedType``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from qpu_k8s.core.model import InvalidBackendError, QuantumBackend, parse_backend_config
from qpu_k8s.core.names import KIND
from qpu_k8s.core.vendors import profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="YAML files (multi-document ok)")


def _check_document(doc: Any, source: str) -> list[str]:
    if isinstance(doc, dict) and doc.get("kind") == KIND:
        backend = QuantumBackend.from_object(doc, source)
        _warn_deprecated(source, [backend])
        return [f"{source}: QuantumBackend {doc['metadata']['name']} ok"]
    if isinstance(doc, dict) and "backends" in doc:
        cfg = parse_backend_config(yaml.safe_dump(doc), source)
        _warn_deprecated(source, cfg.backends)
        return [f"{source}: node config with {len(cfg.backends)} backend(s) ok"]
    return []


def _warn_deprecated(source: str, backends: list[QuantumBackend]) -> None:
    for b in backends:
        if note := profile(b.spec.type).deprecated:
            print(f"{source}: warning: QuantumBackend {b.name}: {note}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as err:
            print(f"{path}: cannot read: {err}", file=sys.stderr)
            failed = True
            continue
        for i, doc in enumerate(docs):
            source = f"{path}" + (f"[{i}]" if len(docs) > 1 else "")
            try:
                for line in _check_document(doc, source):
                    print(line)
            except InvalidBackendError as err:
                print(err, file=sys.stderr)
                failed = True
    return 1 if failed else 0
