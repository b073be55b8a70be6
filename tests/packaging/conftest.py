"""Fixtures for the packaging checks: the helm/kubectl binaries and the chart's renders."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.testing import k8s_cluster, packaging, tools


def _tool(get: Any) -> Path:
    try:
        path: Path = get()
    except tools.UnsupportedPlatformError as err:
        pytest.skip(str(err))
    except tools.ToolError as err:
        pytest.fail(f"{err} (python -m qpu_k8s.testing.tools install fetches the tools)")
    return path


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return _tool(tools.helm)


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    return _tool(tools.kubectl)


@pytest.fixture(scope="session")
def renders(helm_bin: Path) -> dict[str, list[dict[str, Any]]]:
    """Every value set's ``helm template`` output, as objects (CRDs included)."""
    del helm_bin
    return {vs.name: packaging.objects(packaging.render(vs.values)) for vs in packaging.VALUE_SETS}


@pytest.fixture(scope="session")
def render_texts(helm_bin: Path) -> dict[str, str]:
    del helm_bin
    return {vs.name: packaging.render(vs.values) for vs in packaging.VALUE_SETS}


def _cluster_running() -> bool:
    """True when a k8s-local apiserver already answers (another session may be using it)."""
    run_dir = Path(os.environ.get("QPU_K8S_RUN_DIR", "/var/lib/qpu-k8s/run"))
    kubeconfig = run_dir / "kubeconfig"
    if not kubeconfig.exists() or not k8s_cluster.kubectl_120().exists():
        return False
    proc = subprocess.run(
        [
            str(k8s_cluster.kubectl_120()),
            "--kubeconfig",
            str(kubeconfig),
            "get",
            "--raw",
            "/readyz",
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode == 0


@pytest.fixture(scope="session")
def k8s_kubeconfig() -> Iterator[Path]:
    """The real 1.20 cluster of shared/k8s-local. Unlike a plain up/down, it never stops a
    cluster it did not start: other test sessions on this machine may be using it."""
    reason = k8s_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    started_here = not _cluster_running()
    path = k8s_cluster.up()
    try:
        yield path
    finally:
        if started_here:
            k8s_cluster.down()
