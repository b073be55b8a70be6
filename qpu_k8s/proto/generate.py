"""Regenerate (or check) the committed gRPC/protobuf Python modules next to each api.proto.

The generated code is committed so the agents' image needs neither grpcio-tools nor a
build step; `--check` keeps it honest (run by `make test`). Each `<api>/<version>/api.proto`
is staged into a temporary tree shaped like `qpu_k8s/proto/<api>/<version>/api.proto` and
compiled with that tree as the include root, so protoc itself writes package-qualified
imports (`from qpu_k8s.proto.dra.v1 import api_pb2`) and registers a unique file name per
API in protobuf's default descriptor pool. No text rewriting afterwards. protoc's gRPC
plugin writes no type stubs, so `api_pb2_grpc.pyi` is written here from protoc's descriptor
set (and laid out by `ruff format`) for mypy --strict callers.

Usage: python -m qpu_k8s.proto.generate [--check] [--root DIR]
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_PREFIX = Path("qpu_k8s", "proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")
_GRPC_VERSION_RE = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'", re.MULTILINE)


class GenerationError(RuntimeError):
    """protoc failed or is unavailable."""


def proto_sources(root: Path) -> list[Path]:
    """All api.proto files under root, relative to it (e.g. dra/v1/api.proto)."""
    return sorted(p.relative_to(root) for p in root.rglob("*.proto"))


def generated_names(proto: Path) -> list[Path]:
    """The files generated for one .proto (relative paths)."""
    stem = proto.with_suffix("")
    return [stem.parent / (stem.name + suffix) for suffix in GENERATED_SUFFIXES]


def _run_protoc(stage: Path, out: Path, protos: Sequence[Path], descriptors: Path) -> None:
    try:
        from grpc_tools import protoc  # a test/dev dependency only
    except ImportError as exc:
        raise GenerationError(
            "grpcio-tools is not installed: install the test extra (pip install -e '.[test]')"
        ) from exc
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{stage}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        f"--descriptor_set_out={descriptors}",
        *(str(PACKAGE_PREFIX / p) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise GenerationError(f"protoc exited with {code} (see its messages above)")


def _python_module(proto_name: str) -> tuple[str, str]:
    """('qpu_k8s.proto.dra.v1', 'api_pb2') for 'qpu_k8s/proto/dra/v1/api.proto'."""
    path = Path(proto_name)
    return ".".join(path.parent.parts), path.stem + "_pb2"


def grpc_stub_text(file_proto: descriptor_pb2.FileDescriptorProto) -> str:
    """Typed interface for protoc's untyped *_pb2_grpc.py (its plugin writes no stubs).

    Gives mypy --strict callers typed Stub attributes, Servicer methods and
    add_*_to_server functions; written here so no extra protoc plugin is needed.
    """
    package, module = _python_module(file_proto.name)
    prefix = f".{file_proto.package}." if file_proto.package else "."

    def message(type_name: str) -> str:
        if not type_name.startswith(prefix):
            raise GenerationError(
                f"{file_proto.name}: RPC type {type_name} is not defined in this file's package"
            )
        return f"{module}.{type_name[len(prefix) :]}"

    streaming = any(
        m.client_streaming or m.server_streaming for svc in file_proto.service for m in svc.method
    )
    lines = [
        "# Typed interface of api_pb2_grpc.py, written by qpu_k8s.proto.generate. DO NOT EDIT!"
    ]
    if streaming:
        lines += ["import collections.abc", ""]
    lines += ["import grpc", "", f"from {package} import {module}"]
    for service in file_proto.service:
        stub = ["", f"class {service.name}Stub:"]
        stub.append("    def __init__(self, channel: grpc.Channel) -> None: ...")
        servicer = ["", f"class {service.name}Servicer:"]
        for method in service.method:
            req, resp = message(method.input_type), message(method.output_type)
            kind = ("Stream" if method.client_streaming else "Unary") + (
                "Stream" if method.server_streaming else "Unary"
            )
            stub.append(f"    {method.name}: grpc.{kind}MultiCallable[{req}, {resp}]")
            if method.client_streaming:
                req = f"collections.abc.Iterator[{req}]"
            if method.server_streaming:
                resp = f"collections.abc.Iterator[{resp}]"
            servicer.append(
                f"    def {method.name}(self, request: {req}, context: grpc.ServicerContext)"
                f" -> {resp}: ..."
            )
        if not service.method:
            servicer.append("    pass")
        lines += stub + servicer
        lines += [
            "",
            f"def add_{service.name}Servicer_to_server("
            f"servicer: {service.name}Servicer, server: grpc.Server) -> None: ...",
        ]
    return _ruff_format("\n".join(lines) + "\n")


def _ruff_format(source: str) -> str:
    """Lay out a generated stub exactly as the project's `ruff format` would.

    Fixed options (--isolated, line length 100) keep the output independent of where the
    tree lives, so `--check` on a copy outside the repository sees the same bytes.
    """
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        raise GenerationError(
            "ruff is not installed: install the test extra (pip install -e '.[test]')"
        )
    result = subprocess.run(
        [ruff, "format", "--isolated", "--line-length", "100", "--stdin-filename", "stub.pyi", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise GenerationError(f"ruff format failed on a generated stub: {result.stderr.strip()}")
    return result.stdout


def generate_into(root: Path, out: Path) -> list[Path]:
    """Compile every .proto under root; write the generated files into out/<rel dir>/.

    Returns the generated paths relative to out.
    """
    protos = proto_sources(root)
    if not protos:
        raise GenerationError(f"no .proto files under {root}")
    with tempfile.TemporaryDirectory(prefix="qpu-k8s-proto-") as tmp:
        stage, raw = Path(tmp, "stage"), Path(tmp, "out")
        raw.mkdir()
        for proto in protos:
            dest = stage / PACKAGE_PREFIX / proto
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / proto, dest)
        descriptor_set = Path(tmp, "descriptors.binpb")
        _run_protoc(stage, raw, protos, descriptor_set)
        for file_proto in descriptor_pb2.FileDescriptorSet.FromString(
            descriptor_set.read_bytes()
        ).file:
            stub = raw / Path(file_proto.name).with_name(
                Path(file_proto.name).stem + "_pb2_grpc.pyi"
            )
            stub.write_text(grpc_stub_text(file_proto))
        written: list[Path] = []
        for proto in protos:
            for name in generated_names(proto):
                src = raw / PACKAGE_PREFIX / name
                if not src.is_file():
                    raise GenerationError(f"protoc did not produce {name}")
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out / name)
                written.append(name)
    return written


def missing_init_files(root: Path) -> list[Path]:
    """Package directories between root and each .proto that lack an __init__.py."""
    missing: set[Path] = set()
    for proto in proto_sources(root):
        for parent in proto.parents:
            if parent != Path(".") and not (root / parent / "__init__.py").is_file():
                missing.add(parent / "__init__.py")
    return sorted(missing)


def stale_files(root: Path) -> list[str]:
    """Describe every generated file under root that differs from a fresh generation."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qpu-k8s-proto-check-") as tmp:
        fresh_root = Path(tmp)
        expected = set(generate_into(root, fresh_root))
        for name in sorted(expected):
            committed, fresh = root / name, fresh_root / name
            if not committed.is_file():
                problems.append(f"{name}: missing")
                continue
            old, new = committed.read_text(), fresh.read_text()
            if old != new:
                diff = difflib.unified_diff(
                    old.splitlines(), new.splitlines(), "committed", "regenerated", lineterm="", n=0
                )
                first = next((d for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---")), "")
                problems.append(f"{name}: differs (first change: {first[:120]!r})")
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.name.endswith(GENERATED_SUFFIXES) and rel not in expected:
                problems.append(f"{rel}: generated file without a matching .proto")
    problems.extend(f"{p}: missing package marker" for p in missing_init_files(root))
    return problems


def _version_hint(root: Path) -> str:
    """Explain a diff that only comes from a different grpcio-tools version."""
    try:
        installed = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return ""
    for grpc_file in sorted(root.rglob("*_pb2_grpc.py")):
        match = _GRPC_VERSION_RE.search(grpc_file.read_text())
        if match and match.group(1) != installed:
            return (
                f"note: the committed code was generated with grpcio-tools {match.group(1)}, "
                f"this environment has {installed}; install that version or regenerate and "
                "raise the grpcio/protobuf floors in pyproject.toml to match"
            )
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qpu_k8s.proto.generate", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail if the committed files differ",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=PROTO_ROOT,
        help="proto tree to work on (default: this package's directory)",
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if args.check:
            problems = stale_files(root)
            if problems:
                print(f"generated protobuf code under {root} is stale:", file=sys.stderr)
                for problem in problems:
                    print(f"  {problem}", file=sys.stderr)
                hint = _version_hint(root)
                if hint:
                    print(hint, file=sys.stderr)
                print("fix: python -m qpu_k8s.proto.generate (or make proto)", file=sys.stderr)
                return 1
            print(f"generated protobuf code under {root} is up to date")
            return 0
        written = generate_into(root, root)
        missing = missing_init_files(root)
        for init in missing:
            dotted = ".".join(init.parent.parts)
            (root / init).write_text(f'"""Kubelet API package qpu_k8s.proto.{dotted}."""\n')
        print(f"wrote {len(written)} generated files under {root}")
        return 0
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
