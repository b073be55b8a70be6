"""The README's first command: Bell counts near 50/50, sessions opened and closed."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from qpu_k8s.cli import demo


def _run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = io.StringIO()
    rc = demo.run(parser.parse_args(list(argv)), out=out)
    return rc, out.getvalue()


def _share(text: str, script: str, outcome: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{script}: "))
    m = re.search(rf"\b{outcome}: \d+ \(([\d.]+)%\)", line)
    assert m, line
    return float(m.group(1))


@pytest.mark.parametrize("via", ["device-plugin", "qrmi"])
def test_demo(via: str) -> None:
    rc, text = _run("--via", via)
    assert rc == 0, text
    assert 35 < _share(text, "qiskit_bell.py", "00") < 65
    assert 35 < _share(text, "qiskit_bell.py", "11") < 65
    assert 35 < _share(text, "pulser_bell.py", "01") < 65
    assert "sessions still open at the emulator: 0" in text
    assert "(closed by release)" in text
    # The emulator's fake API key is a credential like any other: never printed.
    assert "emulator-apikey" not in text
