"""The DRA driver's durable state: prepared claims, their tokens, and the releases owed.

Why: the kubelet prepares a claim once per node and unprepares it once, and either call
may be repeated after a crash. To answer a repeat with the same CDI IDs and to release
exactly what was acquired (no leak, no double release) the driver must remember, across
restarts, which claim holds which acquisition token.

Kept in a journal (:mod:`qpu_k8s.core.journal`): one append per decision, and safe for two
driver pods on one node (a rolling update surges a second pod onto the same host path):
every change is made under the journal's lock after reading the other's changes. What one
instance is in the middle of is marked with its instance id (``owner``), and each
instance holds ``owners/<id>.lock`` while it lives, so the other leaves it alone until
that instance is gone, and then finishes or cleans it.

Records:

* a :class:`ClaimRecord` per claim (key ``claim/<uid>``), with the boot ID it was
  prepared in: after a reboot the sessions of the old boot are orphans (no pod uses them
  any more) and the CDI specs in tmpfs are gone, so those claims are released and
  dropped; a restart of the driver alone keeps them;
* an :class:`OwedRelease` per session given back but not yet confirmed by the vendor (key
  ``owed/<id>``), paid in the background by the shared release runner: the clean-up of a
  half-prepared claim, of a previous boot, or of a failed prepare never gives up on a
  release because the vendor had a bad minute.

Holds acquisition tokens and object identities only: never credential values (a per-claim
Secret is remembered by name and read again when needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from qpu_k8s.core.checkpoint import CheckpointError, CheckpointFile
from qpu_k8s.core.journal import Journal, Opened, Txn
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.node.releases import Backoff, Debt

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "dra.journal"
# 2: claims in phase ``acquired`` (acquire before bind). Version 1 files are read and
# rewritten as 2; a version 1 driver refuses a version 2 file rather than misread it.
# 3: batches in the journal's native encoding (checksum over the bytes as written; each
# of a prepare's three appends encodes its record several times faster), which a version
# 2 driver could not check; versions 1 and 2 are read and rewritten as 3.
JOURNAL_VERSION = 3
_READS = (1, 2)
# The whole-file checkpoint of versions before the journal (migrated at start).
LEGACY_CHECKPOINT = "dra-checkpoint.json"
OWNERS_DIR = "owners"
_OWNER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ClaimPhase(StrEnum):
    # Written before the first acquire: a crash here may leave acquisitions to release.
    PREPARING = "preparing"
    # Acquired before the pod was bound (binding conditions): tokens, no CDI spec yet; the
    # claim watcher (:mod:`.binding`) owns it until NodePrepareResources writes the spec.
    ACQUIRED = "acquired"
    PREPARED = "prepared"
    # Written before the first release: its CDI spec is gone and must not come back.
    UNPREPARING = "unpreparing"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceRecord(_Model):
    request: str
    pool: str
    device: str
    backend: str
    token: str | None = None  # None until acquired
    released: bool = False
    acquired_at: float | None = None
    # Seconds the vendor keeps the session if never released (its max TTL); 0: nothing.
    held_at_most: int | None = None
    # Per-request overrides from the claim's opaque config, by reference only.
    credentials_secret: str | None = None
    session_mode: str | None = None
    session_max_ttl_seconds: int | None = None
    # Consumable capacity (one device per QPU): the allocation's share and lanes it holds.
    share_id: str | None = None
    lanes: int | None = None
    # Allocated with adminAccess: never acquired, the pod only reads metadata and status.
    admin_access: bool = False


class ClaimRecord(_Model):
    kind: Literal["claim"] = "claim"
    uid: str
    namespace: str
    name: str
    phase: ClaimPhase = ClaimPhase.PREPARING
    devices: list[DeviceRecord] = Field(default_factory=list)
    cdi_device_id: str | None = None
    boot_id: str = ""
    # The instance working on it while PREPARING/UNPREPARING.
    owner: str = ""
    # Acquired by the claim watcher before the pod was bound (its status carries the
    # binding condition).
    acquired_before_bind: bool = False

    def clone(self) -> ClaimRecord:
        """A deep copy: the preparer changes its record in place, the journal's must not
        change with it. Made by pydantic's core (``model_copy(deep=True)`` goes through
        ``copy.deepcopy``, several times slower, on every prepare)."""
        return ClaimRecord.model_validate(self.model_dump())


class OwedRelease(_Model):
    """A session given back whose release the vendor has not confirmed yet."""

    kind: Literal["owed"] = "owed"
    id: str
    backend: str
    token: str
    device: str
    claim_uid: str
    namespace: str
    reason: str
    expires_at: float | None = None
    credentials_secret: str | None = None
    # The instance paying it; another adopts it only once this one is gone.
    owner: str = ""
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""


class KnownBackend(_Model):
    """What the driver last knew of a backend's devices, to publish it again at once after
    a restart (the vendor may take a probe timeout to answer the first probe)."""

    kind: Literal["known"] = "known"
    backend: str
    # Fingerprint of the spec it was learnt under: a changed spec is learnt anew.
    spec: str
    attributes: dict[str, AttributeValue] | None = None
    healthy: bool | None = None
    status: str = ""


class LastLoss(_Model):
    """When a device last went from prepared to lost, so the last-loss gauge survives a
    restart (a scrape after the restart must still show the loss)."""

    kind: Literal["loss"] = "loss"
    backend: str
    at: float


class Record(
    RootModel[
        Annotated[ClaimRecord | OwedRelease | KnownBackend | LastLoss, Field(discriminator="kind")]
    ]
):
    """One journal value: a claim, an owed release, a backend's last known state or its
    last loss."""


class _LegacyState(_Model):
    boot_id: str
    claims: dict[str, ClaimRecord] = Field(default_factory=dict)


def _claim_key(uid: str) -> str:
    return f"claim/{uid}"


def _owed_key(debt_id: str) -> str:
    return f"owed/{debt_id}"


class StateStore:
    """The journal plus this instance's identity; thread-safe."""

    def __init__(
        self, state_dir: Path, boot_id: str, instance: str = "", backoff: Backoff | None = None
    ) -> None:
        self.state_dir = state_dir
        self.boot_id = boot_id
        # Each instance needs its own id (the pod UID in a pod): the owner lock is per id.
        self.instance = instance if _OWNER_RE.fullmatch(instance) else secrets.token_hex(6)
        self.backoff = backoff or Backoff()
        self.journal: Journal[Record] = Journal(
            state_dir / CHECKPOINT_NAME,
            Record,
            version=JOURNAL_VERSION,
            reads=_READS,
            watch=self._count,
            native=True,
        )
        self.prepared = 0  # claims in phase PREPARED, kept as records change
        self._owner_fd: int | None = None
        self._lock = threading.RLock()

    def _count(self, key: str, old: Record | None, new: Record | None) -> None:
        del key
        for rec, step in ((old, -1), (new, 1)):
            if rec is not None and getattr(rec.root, "phase", None) is ClaimPhase.PREPARED:
                self.prepared += step

    # -- opening ------------------------------------------------------------------------------
    def load(self) -> Opened:
        """Open the journal (an unreadable one is moved aside and the driver starts empty:
        refusing to start would stop every prepare on the node) and claim our owner lock."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._hold_owner_lock()
        opened = self.journal.open()
        self._migrate(self.state_dir / LEGACY_CHECKPOINT)
        return opened

    def close(self) -> None:
        self.journal.close()
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None

    def _owner_lock_path(self, instance: str) -> Path:
        return self.state_dir / OWNERS_DIR / f"{instance}.lock"

    def _hold_owner_lock(self) -> None:
        path = self._owner_lock_path(self.instance)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours alone: a stale holder of this id is dead
        self._owner_fd = fd

    def alive(self, instance: str) -> bool:
        """Whether the driver instance ``instance`` still runs (holds its owner lock)."""
        if not instance or instance == self.instance:
            return instance == self.instance
        path = self._owner_lock_path(instance)
        if not _OWNER_RE.fullmatch(instance) or not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock we may just have taken
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False

    def _migrate(self, old: Path) -> None:
        """Carry claims of an earlier version's whole-file checkpoint into the journal."""
        if not old.exists():
            return
        try:
            data = CheckpointFile(old, _LegacyState, 1).load()
        except CheckpointError as err:
            log.error("old checkpoint unreadable; not migrated", extra={"error": str(err)})
            data = None
        if data is not None:
            with self.journal.transaction() as txn:
                for rec in data.claims.values():
                    if txn.get(_claim_key(rec.uid)) is None:
                        txn.put(
                            _claim_key(rec.uid),
                            Record(rec.model_copy(update={"boot_id": data.boot_id})),
                        )
            log.info("migrated the old checkpoint", extra={"claims": len(data.claims)})
        old.unlink()

    # -- claims -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def edit(self, *, durable: bool = True) -> Iterator[Txn[Record]]:
        """A transaction over the journal (reads see the other instance's latest changes)."""
        with self._lock, self.journal.transaction(durable=durable) as txn:
            yield txn

    def get(self, uid: str) -> ClaimRecord | None:
        """The claim as of now (the journal is read to catch up with the other instance)."""
        with self.edit() as txn:
            return claim_of(txn, uid)

    def put(self, record: ClaimRecord, *, durable: bool = True) -> None:
        with self.edit(durable=durable) as txn:
            txn.put(_claim_key(record.uid), Record(record.clone()))

    def drop(self, uid: str) -> None:
        with self.edit() as txn:
            txn.delete(_claim_key(uid))

    def claims(self) -> list[ClaimRecord]:
        """Claims as of this instance's last transaction."""
        return [
            r.root.clone()
            for r in self.journal.snapshot().values()
            if isinstance(r.root, ClaimRecord)
        ]

    # -- what is known of backends (calibration, health) ----------------------------------------
    def known(self) -> dict[str, KnownBackend]:
        return {
            r.root.backend: r.root
            for r in self.journal.snapshot().values()
            if isinstance(r.root, KnownBackend)
        }

    def remember(self, known: KnownBackend) -> None:
        """Not synced: losing it to a power loss costs one probe's wait, nothing held."""
        with self.edit(durable=False) as txn:
            txn.put(known_key(known.backend), Record(known))

    def forget(self, backend: str) -> None:
        with self.edit(durable=False) as txn:
            txn.delete(known_key(backend))

    # -- losses -------------------------------------------------------------------------------
    def remember_loss(self, backend: str, at: float) -> None:
        with self.edit() as txn:
            txn.put(f"loss/{backend}", Record(LastLoss(backend=backend, at=at)))

    def losses(self) -> list[LastLoss]:
        return [r.root for r in self.journal.snapshot().values() if isinstance(r.root, LastLoss)]

    # -- owed releases (the release runner's book) ---------------------------------------------
    def owe(self, txn: Txn[Record], debt: OwedRelease) -> None:
        txn.put(_owed_key(debt.id), Record(debt))

    def owed(self) -> list[OwedRelease]:
        return [r.root for r in self.journal.snapshot().values() if isinstance(r.root, OwedRelease)]

    def due_releases(self, now: float) -> list[Debt]:
        """Our debts that are due, adopting those of a driver instance that is gone."""
        with self.edit() as txn:
            out = []
            for key, rec in txn.items().items():
                owed = rec.root
                if not isinstance(owed, OwedRelease) or owed.next_at > now:
                    continue
                if owed.owner != self.instance:
                    if self.alive(owed.owner):
                        continue  # the other live instance pays it
                    txn.put(key, Record(owed.model_copy(update={"owner": self.instance})))
                out.append(Debt(owed.id, owed.backend, owed.token, owed.reason, owed.expires_at))
            return out

    def next_release_due(self) -> float | None:
        due = [o.next_at for o in self.owed()]
        return min(due) if due else None

    def owes(self, debt_id: str) -> bool:
        """Whether this instance still owes it (not paid, not another live one's to pay)."""
        with self.edit() as txn:
            rec = txn.get(_owed_key(debt_id))
            if rec is None or not isinstance(rec.root, OwedRelease):
                return False
            owner = rec.root.owner
            return owner == self.instance or not self.alive(owner)

    def owed_release(self, debt_id: str) -> OwedRelease | None:
        rec = self.journal.get(_owed_key(debt_id))
        return rec.root if rec is not None and isinstance(rec.root, OwedRelease) else None

    def release_succeeded(self, debt_id: str, now: float) -> None:
        with self.edit() as txn:
            txn.delete(_owed_key(debt_id))

    def release_failed(self, debt_id: str, error: str, now: float) -> float:
        with self.edit() as txn:
            rec = txn.get(_owed_key(debt_id))
            if rec is None or not isinstance(rec.root, OwedRelease):
                return 0.0
            owed = rec.root
            delay = self.backoff.delay(owed.attempts + 1)
            txn.put(
                _owed_key(debt_id),
                Record(
                    owed.model_copy(
                        update={
                            "attempts": owed.attempts + 1,
                            "last_error": error,
                            "next_at": now + delay,
                        }
                    )
                ),
            )
            return delay


def known_key(backend: str) -> str:
    return f"known/{backend}"


def claim_of(txn: Txn[Record], uid: str) -> ClaimRecord | None:
    rec = txn.get(_claim_key(uid))
    return rec.root.clone() if rec is not None and isinstance(rec.root, ClaimRecord) else None
