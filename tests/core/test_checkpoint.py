"""Checkpoints survive round trips and refuse to load anything they cannot trust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from qpu_k8s.core.checkpoint import CheckpointError, CheckpointFile, read_boot_id


class State(BaseModel):
    boot_id: str
    tokens: dict[str, str]


def test_roundtrip_and_mode(tmp_path: Path) -> None:
    cp = CheckpointFile(tmp_path / "sub" / "state.json", State)
    assert cp.load() is None
    cp.save(State(boot_id="b", tokens={"dev": "tok"}))
    assert cp.load() == State(boot_id="b", tokens={"dev": "tok"})
    assert (cp.path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in cp.path.parent.iterdir()] == ["state.json"]  # no temp left


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["data"].update(boot_id="x"), "checksum"),
        (lambda d: d.pop("data"), "not a checkpoint"),
    ],
)
def test_untrusted_content(tmp_path: Path, edit: object, needle: str) -> None:
    cp = CheckpointFile(tmp_path / "state.json", State)
    cp.save(State(boot_id="b", tokens={}))
    doc = json.loads(cp.path.read_text())
    edit(doc)  # type: ignore[operator]
    cp.path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=needle):
        cp.load()


def test_torn_file(tmp_path: Path) -> None:
    cp = CheckpointFile(tmp_path / "state.json", State)
    cp.path.write_text('{"version": 1, "da')
    with pytest.raises(CheckpointError):
        cp.load()


def test_boot_id(tmp_path: Path) -> None:
    assert len(read_boot_id()) >= 32
    f = tmp_path / "boot"
    f.write_text("abc\n")
    assert read_boot_id(f) == "abc"
