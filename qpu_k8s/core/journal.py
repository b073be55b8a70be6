"""A keyed state kept as an append-only journal: one durable write per decision.

The node agents must remember, across crashes and power loss, which acquisition tokens
they hold. Rewriting a whole state file (temp file, fsync, rename, directory fsync) costs
several syncs per transition and grows with the number of live acquisitions; appending
one record and syncing it costs one. So the state is a map ``key -> record`` kept as:

* a file of lines, the first a header ``{"journal": name, "version": n}``, each other a
  batch of changes ``{"ops": [[key, record-or-null], ...], "crc": ...}`` written by one
  :meth:`Journal.transaction` in one ``write`` and (when durable) one ``fdatasync``. A
  batch is all or nothing: a torn last line (power loss, SIGKILL mid-write) is cut off on
  the next open; a bad line before the last is corruption and the file is quarantined;
* compacted (the live state rewritten as one batch, atomically by rename) once it has
  grown to several times its live size, so it never grows without bound;
* shared safely by several processes (the DRA driver runs two pods on a node during a
  rolling update): every transaction takes an exclusive ``flock`` on ``<file>.lock``,
  first reads what others appended since (or everything, after another's compaction),
  then appends. A reader always sees the state as of its last transaction.

Records are pydantic models validated on read. The journal holds what the agents put in
it: tokens and identities, never credentials.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Compact when the file is this many times its size right after the last compaction, and
# at least MIN_COMPACT_BYTES: a journal that small is read in milliseconds at start, while
# each compaction costs two syncs in the middle of whichever decision crossed the line.
GROWTH = 4
MIN_COMPACT_BYTES = 1024 * 1024


class JournalCorrupt(Exception):
    """A line before the last cannot be read: the journal was damaged from outside."""


@dataclass(frozen=True)
class Opened:
    """What opening the journal found."""

    records: int
    # Set when the file could not be trusted: where it was moved, and why.
    quarantined: Path | None = None
    reason: str = ""
    # A last batch cut short by a crash was dropped (its decision never completed).
    torn_tail: bool = False


def _canonical(ops: list[list[Any]]) -> bytes:
    """The bytes a batch's checksum covers: its ops as compact JSON with sorted keys."""
    return json.dumps(ops, sort_keys=True, separators=(",", ":")).encode()


def _crc(ops: list[list[Any]]) -> str:
    return f"{zlib.crc32(_canonical(ops)):08x}"


_PREFIX = b'{"ops":'
_SUFFIX = len(b',"crc":"00000000"}')


def _native_ops(ops: Iterable[tuple[str, BaseModel | None]]) -> bytes:
    """A batch's ops encoded by pydantic's own serializer (no sorted keys): several times
    cheaper than :func:`_canonical` on the agents' hot path, and checked by a reader over
    the bytes as written (see :meth:`Journal._parse`)."""
    parts = [
        json.dumps(key).encode()
        + b","
        + (b"null" if value is None else value.__pydantic_serializer__.to_json(value))
        for key, value in ops
    ]
    return b"[[" + b"],[".join(parts) + b"]]" if parts else b"[]"


def _framed(raw: bytes) -> bytes:
    return _PREFIX + raw + b',"crc":"%08x"}\n' % zlib.crc32(raw)


def _line(ops: list[list[Any]]) -> bytes:
    """One batch line. The ops are written in their canonical form, so the checksum is taken
    over the very bytes written (one encoding per append, on the agents' hot path) and a
    reader recomputing it from the parsed ops gets the same value."""
    return _framed(_canonical(ops))


class Txn(Generic[M]):
    """The changes of one transaction; reads see the journal's state plus these changes."""

    def __init__(self, state: Mapping[str, M]) -> None:
        self._state = state
        self._ops: dict[str, M | None] = {}

    def get(self, key: str) -> M | None:
        if key in self._ops:
            return self._ops[key]
        return self._state.get(key)

    def items(self) -> dict[str, M]:
        out = dict(self._state)
        for key, value in self._ops.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def put(self, key: str, value: M) -> None:
        self._ops[key] = value

    def delete(self, key: str) -> None:
        if self.get(key) is not None:
            self._ops[key] = None

    @property
    def changed(self) -> bool:
        return bool(self._ops)


class Journal(Generic[M]):
    """The journal file of one agent state (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        model: type[M],
        *,
        version: int = 1,
        reads: tuple[int, ...] = (),
        watch: Callable[[str, M | None, M | None], None] | None = None,
        exclusive: bool = False,
        native: bool = False,
    ) -> None:
        """``watch(key, old, new)`` is called for every record that changes, whoever wrote
        it (this process, another one, a reload): stores keep counters with it, so nothing
        on a hot path has to scan the whole state.

        ``exclusive``: the caller guarantees that no other process writes this journal
        while it is open (the device plugin holds its state directory's lock), so a
        transaction skips the file lock and the look for others' appends: four syscalls
        less on every decision.

        ``reads``: older versions whose records this version still reads; such a file is
        rewritten under ``version`` when opened, so a process of the older version still
        running (a rolling update) fails its next transaction instead of misreading
        records it does not know (it finds a header it refuses).

        ``native``: write batches as pydantic serializes them, the checksum over the bytes
        as written, instead of canonical JSON (a reader of this module checks either). A
        reader from before ``native`` existed cannot check such lines, so a journal turns
        it on only together with a version bump (its older readers then refuse the file)."""
        self.path = path
        self._watch = watch
        self.exclusive = exclusive
        self.native = native
        self.lock_path = path.with_name(path.name + ".lock")
        self.model = model
        self.version = version
        self.reads = reads
        self._outdated = False
        self.header = {"journal": path.stem, "version": version}
        self._state: dict[str, M] = {}
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._inode: int | None = None
        self._offset = 0
        self._compacted_size = 0
        # flock excludes other processes; threads of this one share the lock file's
        # description (flock would let them all in), so they take this first.
        self._threads = threading.Lock()

    # -- opening ------------------------------------------------------------------------------
    def open(self) -> Opened:
        """Read the journal (creating it if absent); quarantine it if it cannot be trusted."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            try:
                torn = self._reload()
            except JournalCorrupt as err:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                self._close_file()
                self.path.replace(aside)
                log.error(
                    "checkpoint unreadable; moved aside, starting empty",
                    extra={"error": str(err), "moved_to": str(aside)},
                )
                self._reload()
                return Opened(0, aside, str(err))
            if self._outdated:
                log.info("journal: upgraded", extra={"version": self.version})
                self._compact()
        return Opened(len(self._state), torn_tail=torn)

    def close(self) -> None:
        self._close_file()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._inode = None

    def _ensure_file(self) -> None:
        """Open the journal file, creating it with its header (durably) when absent."""
        if self._fd is not None:
            return
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        if created or os.fstat(fd).st_size == 0:
            os.write(fd, (json.dumps(self.header) + "\n").encode())
            os.fsync(fd)
            _fsync_dir(self.path.parent)
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        self._offset = 0

    def _reload(self) -> bool:
        """Read the whole file into a fresh state; returns True if a torn tail was cut."""
        self._close_file()
        self._ensure_file()
        old, self._state = self._state, {}
        self._offset = 0
        watch, self._watch = self._watch, None  # report the difference once, below
        try:
            torn = self._catch_up(first=True)
        finally:
            self._watch = watch
        if watch is not None:
            for key in old.keys() - self._state.keys():
                watch(key, old[key], None)
            for key, value in self._state.items():
                if old.get(key) != value:
                    watch(key, old.get(key), value)
        self._compacted_size = self._offset
        return torn

    def _catch_up(self, first: bool = False) -> bool:
        """Apply the lines appended since our offset (by us or another process)."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == self._offset:
            return False
        data = os.pread(self._fd, size - self._offset, self._offset)
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: a torn write, or nothing
        if first and not lines:
            # Not even a header line: a file we did not write (a torn header is only ever
            # a new, empty journal, so nothing of value is moved aside with it).
            raise JournalCorrupt(f"{self.path}: no header line")
        pos = self._offset
        torn = bool(tail)
        for index, raw in enumerate(lines):
            if first and pos == 0:
                self._check_header(raw)
            else:
                try:
                    ops = self._parse(raw)
                except ValueError as err:
                    if index == len(lines) - 1 and not tail:
                        torn = True  # the last complete-looking line is itself cut short
                        break
                    raise JournalCorrupt(f"{self.path}: line at byte {pos}: {err}") from None
                self._apply(ops)
            pos += len(raw) + 1
        if torn:
            # Only a writer that died mid-write leaves this; we hold the lock, so no one
            # is writing now. Cut it off so the next batch starts on a clean line.
            os.truncate(self._fd, pos)
            log.warning("journal: dropped a batch cut short by a crash", extra={"at": pos})
        self._offset = pos
        return torn

    def _check_header(self, raw: bytes) -> None:
        try:
            head = json.loads(raw)
        except ValueError:
            raise JournalCorrupt(f"{self.path}: no header line") from None
        self._outdated = isinstance(head, dict) and head.get("version") in self.reads
        if not isinstance(head, dict) or head.get("version") not in (self.version, *self.reads):
            got = head.get("version") if isinstance(head, dict) else head
            raise JournalCorrupt(f"{self.path}: version {got!r}, expected {self.version}")

    def _parse(self, raw: bytes) -> list[tuple[str, M | None]]:
        try:
            doc = json.loads(raw)
            ops = doc["ops"]
            crc = doc["crc"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"not a batch ({err})") from None
        if not isinstance(ops, list) or not isinstance(crc, str):
            raise ValueError("not a batch")
        # A native batch is checked over its bytes as written (the fixed frame around
        # them), a canonical one over its re-encoded ops: either must match.
        written = raw[len(_PREFIX) : -_SUFFIX] if raw.startswith(_PREFIX) else b""
        if crc != f"{zlib.crc32(written):08x}" and crc != _crc(ops):
            raise ValueError("checksum mismatch")
        out: list[tuple[str, M | None]] = []
        for op in ops:
            if not (isinstance(op, list) and len(op) == 2 and isinstance(op[0], str)):
                raise ValueError(f"bad operation {op!r}")
            try:
                out.append((op[0], None if op[1] is None else self.model.model_validate(op[1])))
            except ValidationError as err:
                raise ValueError(f"invalid record {op[0]!r}: {err}") from None
        return out

    def _apply(self, ops: Iterable[tuple[str, M | None]]) -> None:
        for key, value in ops:
            old = self._state.pop(key, None) if value is None else self._state.get(key)
            if value is not None:
                self._state[key] = value
            if self._watch is not None and old is not value:
                self._watch(key, old, value)

    # -- transactions --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._lock_fd is not None, "open() the journal first"
        with self._threads:
            if self.exclusive and self._fd is not None:
                yield
                return
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Under the lock: catch up, or reload if another process compacted the file."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if inode != self._inode:
            self._reload()
            if self._outdated:  # an older process compacted it meanwhile
                self._compact()
        else:
            self._catch_up()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Txn[M]]:
        """Read-modify-write under the lock; the changes are appended in one write.

        ``durable=False`` leaves the write in the page cache: it survives a process crash
        (the next open reads it) but not a power loss; the next durable write syncs it.
        """
        with self._locked():
            if not self.exclusive:
                self._refresh()
            txn: Txn[M] = Txn(self._state)
            yield txn
            if txn.changed:
                self._append(txn, durable)

    def _append(self, txn: Txn[M], durable: bool) -> None:
        assert self._fd is not None
        line = self._encode(txn._ops.items())
        os.write(self._fd, line)
        if durable:
            os.fdatasync(self._fd)
        self._offset += len(line)
        self._apply(txn._ops.items())
        if self._offset > max(MIN_COMPACT_BYTES, GROWTH * self._compacted_size):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the live state as one batch (atomic rename; others reload by inode)."""
        tmp = self.path.with_name(f".{self.path.name}.compact")
        items = sorted(self._state.items())
        body = (json.dumps(self.header) + "\n").encode() + (self._encode(items) if items else b"")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._close_file()
        self._ensure_file()
        self._offset = self._compacted_size = len(body)

    def _encode(self, ops: Iterable[tuple[str, M | None]]) -> bytes:
        """One batch line of ``ops`` in this journal's encoding."""
        if self.native:
            return _framed(_native_ops(ops))
        return _line([[k, None if v is None else v.model_dump(mode="json")] for k, v in ops])

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> M | None:
        """The record as of this process's last transaction (or open)."""
        return self._state.get(key)

    def snapshot(self) -> dict[str, M]:
        return dict(self._state)

    @property
    def size(self) -> int:
        """Bytes in the file (header included), for tests and metrics."""
        return self._offset


def read_snapshot(path: Path, model: type[M], version: int = 1) -> dict[str, M]:
    """The state a journal file holds, read without locking or repairing it (diagnostics
    and tests; a torn last batch is ignored as :meth:`Journal.open` would drop it)."""
    reader: Journal[M] = Journal(path, model, version=version)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    lines = raw.split(b"\n")
    if lines[-1]:
        lines.pop()  # torn tail
    reader._check_header(lines[0])
    for line in lines[1:]:
        if line:
            reader._apply(reader._parse(line))
    return reader._state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
