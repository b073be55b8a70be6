"""The Dockerfile, checked without a Docker engine: hadolint, its structure, and its build
stage replayed (the wheel is built from exactly the files the build context admits)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from testsupport import packaging, tools

DOCKERFILE = packaging.REPO / "Dockerfile"
DOCKERIGNORE = packaging.REPO / ".dockerignore"


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = "(preamble)"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = m.group(2)
            stages[current] = [line]
        else:
            stages.setdefault(current, []).append(line)
    return stages


def test_hadolint_finds_nothing() -> None:
    try:
        hadolint = tools.hadolint()
    except tools.UnsupportedPlatformError as err:
        pytest.skip(str(err))
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_a_pinned_slim_python_311() -> None:
    m = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert m, "the base image is one ARG, so every stage uses the same one"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", m.group(1))
    for name, lines in _stages().items():
        if name == "(preamble)":
            continue
        base = lines[0].split()[1]
        assert base in {"${PYTHON_IMAGE}", *_stages()}, f"stage {name} starts from {base}"


def test_stages_and_targets() -> None:
    stages = _stages()
    assert list(stages)[-1] == "agents", "the default target (last stage) is the light image"
    assert {"builder", "runtime", "emulator", "agents"} <= set(stages)
    for final in ("agents", "emulator"):
        lines = stages[final]
        assert lines[0].split()[1] == "runtime"
        assert "USER 65532:65532" in lines, f"{final} runs as non-root"
        assert not [x for x in lines if x.startswith("RUN")], f"{final} runs no build step"
        assert any(x.startswith("COPY --from=venv-") for x in lines)
    runtime = " ".join(stages["runtime"])
    assert 'ENTRYPOINT ["qpu-k8s"]' in runtime
    for tool in ("apt-get", "gcc", "build-essential", "make "):
        assert tool not in runtime, f"no {tool} in the runtime image"
    assert "pip uninstall" in runtime, "the runtime drops the base image's pip"


def test_pip_is_pinned_and_constrained() -> None:
    builder = " ".join(_stages()["builder"])
    for pkg in ("pip", "setuptools", "wheel"):
        assert re.search(rf'"{pkg}==[0-9.]+"', builder), f"{pkg} pinned"
    assert "PIP_CONSTRAINT=/src/docker/constraints.txt" in builder
    assert "--no-build-isolation" in builder


def _copied_sources() -> list[str]:
    out = []
    for lines in _stages().values():
        for line in lines:
            parts = line.split()
            if parts[0] == "COPY" and not parts[1].startswith("--from"):
                out += [p.rstrip("/") for p in parts[1:-1]]
    return out


def _admitted_roots() -> set[str]:
    return {
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    }


def _excluded(rel: str) -> bool:
    patterns = [
        line.removeprefix("**/").rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("**/")
    ]
    return any(fnmatch.fnmatch(part, p) for part in rel.split("/") for p in patterns)


def test_dockerignore_admits_exactly_what_is_copied() -> None:
    rules = [x for x in DOCKERIGNORE.read_text().splitlines() if x and not x.startswith("#")]
    assert rules[0] == "*", "everything is excluded first, then the sources let back in"
    copied = set(_copied_sources())
    assert copied == _admitted_roots()
    # The package is one real tree: nothing in it points outside (path = import path).
    links = [p for p in (packaging.REPO / "qpu_k8s").rglob("*") if p.is_symlink()]
    assert not links, f"symlinks in the package: {links}"


def _context(tmp: Path) -> Path:
    """The build context as Docker sends it: the copied roots minus excluded files."""
    ctx = tmp / "ctx"
    for root in _copied_sources():
        src = packaging.REPO / root
        dst = ctx / root
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(
                src,
                dst,
                symlinks=True,
                ignore=lambda d, names: [n for n in names if _excluded(n)],
            )
        else:
            shutil.copy2(src, dst)
    return ctx


def test_wheel_builds_from_the_context_with_every_agent(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    out = tmp_path / "wheels"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--disable-pip-version-check", "-w", str(out), str(ctx)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("qpu_k8s-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "qpu-k8s = qpu_k8s.cli:main" in zf.read(entry_points).decode()
    for module in ("cli/commands", "deviceplugin/cli", "dra/cli", "operator/cli", "emulator/cli"):
        assert f"qpu_k8s/{module}.py" in names, module
    assert any(n.startswith("qpu_k8s/proto/") and n.endswith("_pb2.py") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
