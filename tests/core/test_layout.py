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
