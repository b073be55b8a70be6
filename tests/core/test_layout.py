"""The layout promises of the README: one namespace, no stdlib shadowing, a light agent stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # cwd = the repo root, where ``python -m`` puts the top-level folders on sys.path.
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_no_top_level_package_shadows_the_standard_library() -> None:
    proc = _run("import sys; sys.path.insert(0, ''); import operator; print(operator.eq(1, 1))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert not (ROOT / "operator" / "__init__.py").exists()


@pytest.mark.parametrize(
    "module",
    ["qpu_k8s.cli", "qpu_k8s.deviceplugin.agent", "qpu_k8s.dra.agent", "qpu_k8s.operator.handlers"],
)
def test_agents_import_no_simulator(module: str) -> None:
    """The node and operator agents run on the light stack (no qiskit, pulser, qutip)."""
    code = (
        "import sys, site; site.main(); "
        f"import {module}; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'qiskit', 'qiskit_aer', 'qiskit_ibm_runtime', 'pulser', 'pulser_simulation', 'qutip'}); "
        "print(','.join(heavy))"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"{module} imports {proc.stdout.strip()}"


# -- the architecture: which package may import which ------------------------------------------
# docs/architecture.md explains each; an import against these arrows fails here.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "proto": set(),
    "emulator": set(),
    "resourceslices": {"core"},
    "node": {"core"},
    "fakekubelet": {"core", "proto"},
    "deviceplugin": {"core", "node", "proto"},
    "dra": {"core", "node", "resourceslices", "proto"},
    "operator": {"core", "resourceslices"},
    "cli": {"core", "deviceplugin", "dra", "operator", "emulator", "fakekubelet", "node"},
}


def _imports(path: Path, parts: tuple[str, ...]) -> set[str]:
    """The top-level names this module imports (qpu_k8s.X → X; other roots as they are)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-1])[: len(parts) - node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        for name in names:
            head = name.split(".")
            out.add(head[1] if head[0] == "qpu_k8s" and len(head) > 1 else head[0])
    return out


def test_imports_follow_the_architecture() -> None:
    """The core imports no component; no component imports an agent it does not own; the
    operator never imports a node agent; nothing in the package imports test support."""
    package = ROOT / "qpu_k8s"
    problems = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if len(parts) < 3 or parts[1] == "examples":
            continue  # qpu_k8s/__init__.py; the pod scripts are not part of the package's code
        pkg = parts[1]
        assert pkg in ALLOWED, f"{pkg}: a new package; say in ALLOWED what it may import"
        for name in _imports(path, parts):
            if name in ("testsupport", "tests", "benchmarks"):
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name in ALLOWED and name != pkg and name not in ALLOWED[pkg]:
                problems.append(f"{path.relative_to(ROOT)} ({pkg}) imports {name}")
    assert not problems, "\n".join(problems)


def test_the_architecture_test_catches_a_wrong_import(tmp_path: Path) -> None:
    """The check above can fail: an operator module importing the DRA agent is caught."""
    bad = tmp_path / "qpu_k8s" / "operator" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from qpu_k8s.dra.agent import DraDriver\nfrom . import slices\n")
    names = _imports(bad, ("qpu_k8s", "operator", "x"))
    assert "dra" in names
    assert "dra" not in ALLOWED["operator"]
