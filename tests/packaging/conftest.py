"""Fixtures for the packaging checks: the helm/kubectl binaries and the chart's renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testsupport import packaging, tools


def _tool(get: Any) -> Path:
    try:
        path: Path = get()
    except tools.UnsupportedPlatformError as err:
        pytest.skip(str(err))
    except tools.ToolError as err:
        pytest.fail(f"{err} (python -m testsupport.tools install fetches the tools)")
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
