"""The journal: one write per decision, crash-safe, compacted, shared by processes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from qpu_k8s.core import journal as journal_mod
from qpu_k8s.core.journal import Journal


class Rec(BaseModel):
    token: str
    n: int = 0


def opened(path: Path) -> Journal[Rec]:
    j: Journal[Rec] = Journal(path, Rec)
    j.open()
    return j


def test_changes_survive_a_reopen_and_a_batch_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "state.journal"
    j = opened(path)
    with j.transaction() as txn:
        txn.put("a", Rec(token="t-a"))
        txn.put("b", Rec(token="t-b"))
    with j.transaction() as txn:
        assert txn.get("a") == Rec(token="t-a")
        txn.delete("a")
        txn.put("b", Rec(token="t-b", n=2))
    j.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"journal": "state", "version": 1}
    assert len(lines) == 3  # header + one line per transaction
    again = opened(path)
    assert again.snapshot() == {"b": Rec(token="t-b", n=2)}


def test_an_empty_transaction_writes_nothing(tmp_path: Path) -> None:
    j = opened(tmp_path / "s.journal")
    size = j.size
    with j.transaction() as txn:
        assert txn.get("x") is None
    assert j.size == size


def test_a_batch_cut_short_by_a_crash_is_dropped_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    j = opened(path)
    with j.transaction() as txn:
        txn.put("kept", Rec(token="k"))
    j.close()
    good = path.read_bytes()
    # A crash mid-write of a two-record batch: only a prefix of its line reached the disk.
    torn = b'{"ops":[["x",{"token":"x","n":0}],["y",{"tok'
    path.write_bytes(good + torn)
    j2: Journal[Rec] = Journal(path, Rec)
    result = j2.open()
    assert result.torn_tail
    assert j2.snapshot() == {"kept": Rec(token="k")}
    assert path.read_bytes() == good  # cut off, so the next batch starts on a clean line
    with j2.transaction() as txn:
        txn.put("next", Rec(token="n"))
    j2.close()
    assert set(opened(path).snapshot()) == {"kept", "next"}


def test_a_damaged_line_before_the_last_quarantines_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    j = opened(path)
    for i in range(3):
        with j.transaction() as txn:
            txn.put(f"k{i}", Rec(token=f"t{i}"))
    j.close()
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"t1", b"tX")  # checksum no longer matches
    path.write_bytes(b"\n".join(lines))
    j2: Journal[Rec] = Journal(path, Rec)
    result = j2.open()
    assert result.quarantined is not None
    assert result.quarantined.exists()
    assert "checksum" in result.reason
    assert j2.snapshot() == {}


def test_garbage_and_a_wrong_version_are_quarantined(tmp_path: Path) -> None:
    for content in (b"\xff\xfe not json\n", json.dumps({"journal": "s", "version": 9}).encode()):
        path = tmp_path / "s.journal"
        path.write_bytes(content + b"\n" + b'{"ops":[],"crc":"00000000"}\n')
        j: Journal[Rec] = Journal(path, Rec)
        assert j.open().quarantined is not None
        j.close()
        for p in tmp_path.glob("s.journal.corrupt-*"):
            p.unlink()


def test_an_older_version_is_read_and_rewritten_and_its_writer_then_refuses(
    tmp_path: Path,
) -> None:
    """A rolling update: the new version reads the old file and rewrites it under its own
    version; the old process still running fails its next transaction (it finds a header it
    refuses) rather than misread records it does not know."""
    path = tmp_path / "s.journal"
    old = opened(path)
    with old.transaction() as txn:
        txn.put("a", Rec(token="t-a"))
    new: Journal[Rec] = Journal(path, Rec, version=2, reads=(1,))
    assert new.open().quarantined is None
    assert new.snapshot() == {"a": Rec(token="t-a")}
    assert json.loads(path.read_text().splitlines()[0])["version"] == 2
    with new.transaction() as txn:
        txn.put("b", Rec(token="t-b"))
    with (
        pytest.raises(journal_mod.JournalCorrupt, match="version 2, expected 1"),
        old.transaction(),
    ):
        pass
    new.close()
    again: Journal[Rec] = Journal(path, Rec, version=2, reads=(1,))
    again.open()
    assert set(again.snapshot()) == {"a", "b"}


def test_a_record_that_fails_validation_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    ops = [["a", {"token": 5}]]
    path.write_bytes(
        json.dumps({"journal": "s", "version": 1}).encode()
        + b"\n"
        + journal_mod._line(ops)
        + journal_mod._line([["b", {"token": "ok"}]])
    )
    j: Journal[Rec] = Journal(path, Rec)
    assert j.open().quarantined is not None


def test_compaction_bounds_the_file_and_keeps_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "MIN_COMPACT_BYTES", 2048)
    path = tmp_path / "s.journal"
    j = opened(path)
    for i in range(500):
        with j.transaction() as txn:
            txn.put(f"k{i % 5}", Rec(token=f"t{i}", n=i))
    assert path.stat().st_size < 4 * 2048
    expect = {f"k{i}": Rec(token=f"t{495 + i}", n=495 + i) for i in range(5)}
    assert j.snapshot() == expect
    j.close()
    assert opened(path).snapshot() == expect


def _writer(path: str, name: str, count: int) -> None:
    j: Journal[Rec] = Journal(Path(path), Rec)
    j.open()
    for i in range(count):
        with j.transaction() as txn:
            cur = txn.get("counter")
            txn.put("counter", Rec(token="c", n=(cur.n if cur else 0) + 1))
            txn.put(f"{name}-{i}", Rec(token=name, n=i))
    j.close()


def test_two_processes_share_one_journal_without_losing_an_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-modify-write from two processes at once (compaction included): no lost update."""
    monkeypatch.setattr(journal_mod, "MIN_COMPACT_BYTES", 4096)
    path = tmp_path / "s.journal"
    opened(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), n, 200)) for n in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = opened(path).snapshot()
    assert state["counter"].n == 400
    assert len(state) == 401


def test_a_second_instance_sees_the_first_ones_changes_at_its_next_transaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.journal"
    first, second = opened(path), opened(path)
    with first.transaction() as txn:
        txn.put("a", Rec(token="from-first"))
    assert second.get("a") is None  # not read yet
    with second.transaction() as txn:
        assert txn.get("a") == Rec(token="from-first")
        txn.delete("a")
    with first.transaction() as txn:
        assert txn.get("a") is None


def test_files_are_private(tmp_path: Path) -> None:
    j = opened(tmp_path / "s.journal")
    with j.transaction() as txn:
        txn.put("a", Rec(token="t"))
    assert os.stat(tmp_path / "s.journal").st_mode & 0o077 == 0


def test_a_native_journal_upgrades_a_canonical_one_and_checks_what_it_wrote(
    tmp_path: Path,
) -> None:
    """The native encoding (the DRA journal's hot path) reads an older canonical file,
    rewrites it natively, keeps every record across a reopen, and its checksum still
    catches a changed byte inside a record (it covers the bytes as written)."""
    path = tmp_path / "s.journal"
    old = opened(path)
    with old.transaction() as txn:
        txn.put("a", Rec(token="t-a", n=1))
    old.close()
    new: Journal[Rec] = Journal(path, Rec, version=2, reads=(1,), native=True)
    assert new.open().quarantined is None
    with new.transaction() as txn:
        txn.put("b", Rec(token="t-b", n=2))
        txn.delete("a")
    with new.transaction() as txn:
        txn.put("c", Rec(token='quote"and\\slash', n=3))
    new.close()
    lines = path.read_bytes().splitlines()
    assert all(b'"token":"' in line or b"null" in line for line in lines[1:])
    again: Journal[Rec] = Journal(path, Rec, version=2, native=True)
    again.open()
    assert again.snapshot() == {"b": Rec(token="t-b", n=2), "c": Rec(token='quote"and\\slash', n=3)}
    again.close()
    path.write_bytes(path.read_bytes().replace(b'"t-b"', b'"t-X"'))
    damaged: Journal[Rec] = Journal(path, Rec, version=2, native=True)
    assert damaged.open().quarantined is not None
