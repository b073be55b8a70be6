"""The device plugin's live acquisitions: their state machine and on-disk checkpoint.

The kubelet's device-plugin API never says which pod an ``Allocate`` is for, and never says
when that pod ends. So an acquisition is keyed by the device IDs of the container request it
was made for (``request``), bound to a pod/container when the PodResources API first shows a
container holding exactly those devices, and released once no container holds them any
more. Every transition is written to the checkpoint (atomic replace, fsync) before anything
depends on it, so a plugin restart neither leaks nor double-releases::

    ACQUIRING ──acquire ok──► ALLOCATED ──a container holds exactly `request`──► BOUND
      │ acquire failed:           │                                               │
      │   record dropped          │ not held for `release_grace`,                 │ not held for
      │ plugin died mid-acquire:  │ or superseded by a newer Allocate             │ `release_grace`,
      ▼   token unknown           ▼ of the same devices                           │ or superseded
     LOST (reported)          RELEASING ◄─────────────────────────────────────────┘
                               │    ▲ release failed: retry, exponential backoff
                               │    └──┘
                               ▼ release ok
                            RELEASED (tombstone; pruned after `tombstone_ttl`, newest kept)

Rules, and why:

* "Held" means some container in a *successful* PodResources ``List`` has exactly the
  ``request`` device set of our resource. The kubelet lists a container's devices as
  allocated, so the set is the one our ``Allocate`` saw.
* Grace: an acquisition is released only after successful Lists have not shown it held for
  ``release_grace`` seconds without a break. A failed List, a kubelet restart (whose pod
  list is empty until it has synced its pods) and our own start restart that clock, and a
  kubelet restart or our own start (the kubelet may have restarted with us, e.g. after a
  node reboot) also holds every release back for ``restart_hold`` seconds. An
  ``Allocate`` that the kubelet has not listed yet is therefore never released too early.
* Superseded: when several live acquisitions of one backend share a ``request`` set (the
  kubelet re-ran ``Allocate`` for the same devices, e.g. after its own crash), only the
  newest is bound; the older ones' tokens are in no container's environment and are
  released.
* A BOUND acquisition whose devices are now held by a different container is released: its
  pod is gone (a device belongs to one container at a time).
* Only RELEASING records are released, by one worker at a time per record, and RELEASED is
  written right after the vendor confirms, so a restart never releases twice. The one
  window left is a crash between the vendor's answer and that write (microseconds): the
  release is then sent once more after the restart, to a session the vendor has already
  closed, which it answers as a no-op.
* The token is written in the thread that called the vendor, right as acquire returns
  (not after the rest of the Allocate call), so the window in which a crash loses a
  token is the time from the vendor's answer to one checkpoint write. A record still
  ACQUIRING at start-up is LOST: reported (log, metric) with ``held_at_most``, the time
  after which the vendor frees it by itself (the session max TTL; 0 for types whose
  acquire holds nothing). qrmi cannot list a backend's sessions, so nothing better is
  possible from here.
* Init containers are not listed by PodResources (before sidecar containers): an
  acquisition made for one is released ``release_grace`` after its Allocate.

The checkpoint holds tokens (vendor session ids) and pod identities, never credentials.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qpu_k8s.core.checkpoint import CheckpointError, CheckpointFile
from qpu_k8s.core.journal import Journal
from qpu_k8s.deviceplugin import metrics
from qpu_k8s.node.releases import Backoff, Debt

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "acquisitions.journal"
# 2: batches in the journal's native encoding (checksum over the bytes as written: each of
# an Allocate's two appends encodes its record several times faster), which a version 1
# plugin could not check; version 1 files are read and rewritten as 2.
JOURNAL_VERSION = 2
_READS = (1,)
# The whole-file checkpoint of versions before the journal (migrated at start).
LEGACY_CHECKPOINT = "acquisitions.json"
LEGACY_VERSION = 1


class AcqState(StrEnum):
    ACQUIRING = "acquiring"
    ALLOCATED = "allocated"
    BOUND = "bound"
    RELEASING = "releasing"
    RELEASED = "released"
    LOST = "lost"


# States in which a vendor resource is (or may be) held.
HOLDING = frozenset({AcqState.ACQUIRING, AcqState.ALLOCATED, AcqState.BOUND, AcqState.RELEASING})
_WAITING_FOR_POD = frozenset({AcqState.ALLOCATED, AcqState.BOUND})
_TERMINAL = frozenset({AcqState.RELEASED, AcqState.LOST})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ContainerRef(_Frozen):
    """A container as PodResources names it (v1 List has no pod UID)."""

    namespace: str
    pod: str
    container: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


class Acquisition(_Frozen):
    """One QRMI acquisition of one backend for one container."""

    id: str
    backend: str
    resource_id: str
    devices: tuple[str, ...]  # this backend's lanes in the container request
    request: tuple[str, ...]  # every device ID of the container request, sorted: the key
    state: AcqState
    token: str | None = None
    created_at: float
    # Seconds the vendor holds it if never released (session max TTL); 0: nothing held.
    held_at_most: int | None = None
    acquired_at: float | None = None
    holder: ContainerRef | None = None
    bound_at: float | None = None
    release_reason: str = ""
    release_attempts: int = 0
    next_release_at: float = 0.0
    last_error: str = ""
    released_at: float | None = None

    @property
    def request_set(self) -> frozenset[str]:
        return frozenset(self.request)


class LedgerData(_Frozen):
    """The whole-file checkpoint of earlier versions, read once to migrate it."""

    acquisitions: list[Acquisition] = Field(default_factory=list)


@dataclass(frozen=True)
class Intent:
    """What Allocate is about to acquire: one backend's lanes of one container request."""

    backend: str
    resource_id: str
    devices: tuple[str, ...]
    request: tuple[str, ...]
    held_at_most: int | None = None


class Ledger:
    """The acquisitions of this node, journaled at every transition; thread-safe.

    Each transition is one append to the journal (:mod:`qpu_k8s.core.journal`): durable
    (synced) when anything depends on it; the ACQUIRING intent written before a vendor
    call is not synced, the token that follows it is (one sync covers both), so a
    process crash never loses the intent, and a power loss in that millisecond loses at
    most the report that an acquire was in flight (its session leaked either way).

    Only one process writes it (the agent holds its state directory's lock first), so the
    journal is opened ``exclusive``: no file lock nor look for others' appends per write.

    Times are wall-clock seconds passed in by the caller (tests drive them directly).
    """

    def __init__(
        self,
        path: Path,
        *,
        release_grace: float = 10.0,
        tombstone_ttl: float = 600.0,
        max_tombstones: int = 32,
        backoff: Backoff | None = None,
    ) -> None:
        self.path = path
        self.release_grace = release_grace
        self.tombstone_ttl = tombstone_ttl
        self.max_tombstones = max_tombstones
        self.backoff = backoff or Backoff()
        self._journal: Journal[Acquisition] = Journal(
            path,
            Acquisition,
            version=JOURNAL_VERSION,
            reads=_READS,
            watch=self._count,
            exclusive=True,
            native=True,
        )
        self._lock = threading.RLock()
        self._unheld_since: dict[str, float] = {}
        self._hold_until = 0.0
        self._live: dict[str, int] = {}  # backend -> acquisitions holding something

    # -- persistence ------------------------------------------------------------------------
    def load(self, now: float) -> None:
        """Open the journal. Acquires that were in flight when we died become LOST.

        An unreadable journal is moved aside (``.corrupt-<time>``) and reported: its tokens
        cannot be trusted, and refusing to start would take the node's QPUs away.
        """
        with self._lock:
            self._journal.open()
            _migrate_checkpoint(self.path.with_name(LEGACY_CHECKPOINT), self._journal)
            with self._journal.transaction() as txn:
                for acq in txn.items().values():
                    if acq.state is AcqState.ACQUIRING:
                        txn.put(
                            acq.id,
                            acq.model_copy(update={"state": AcqState.LOST, "released_at": now}),
                        )
                        metrics.LOSSES.report(
                            acq.backend,
                            acq.held_at_most,
                            "acquire was in flight when the plugin stopped",
                            at=now,
                            acquisition=acq.id,
                        )
            # Losses of earlier processes stay visible (their tombstones keep the time).
            for acq in self._journal.snapshot().values():
                if acq.state is AcqState.LOST and acq.released_at is not None:
                    metrics.LOSSES.seen(acq.backend, acq.released_at)
            # Our own start breaks the observation of the kubelet: restart every clock.
            self._unheld_since.clear()
            acqs = self._journal.snapshot()
            log.info(
                "checkpoint loaded",
                extra={
                    "path": str(self.path),
                    "live": sum(a.state in HOLDING for a in acqs.values()),
                    "records": len(acqs),
                },
            )

    def close(self) -> None:
        with self._lock:
            self._journal.close()

    def _count(self, key: str, old: Acquisition | None, new: Acquisition | None) -> None:
        """Keep the live count per backend (and its gauge) as records change: O(1)."""
        del key
        if (
            old is not None
            and new is not None
            and old.backend == new.backend
            and old.state in HOLDING
            and new.state in HOLDING
        ):
            return  # a step between live states (the token came, it was bound): no change
        for acq, step in ((old, -1), (new, 1)):
            if acq is not None and acq.state in HOLDING:
                n = self._live.get(acq.backend, 0) + step
                self._live[acq.backend] = n
                metrics.set_live(acq.backend, n)

    def _write(self, changes: Iterable[Acquisition], *, durable: bool = True) -> None:
        with self._journal.transaction(durable=durable) as txn:
            for acq in changes:
                txn.put(acq.id, acq)

    # -- reads ------------------------------------------------------------------------------
    def snapshot(self) -> list[Acquisition]:
        with self._lock:
            return sorted(self._journal.snapshot().values(), key=lambda a: a.created_at)

    def get(self, acq_id: str) -> Acquisition | None:
        with self._lock:
            return self._journal.get(acq_id)

    def live(self) -> list[Acquisition]:
        return [a for a in self.snapshot() if a.state in HOLDING]

    # -- the Allocate path ------------------------------------------------------------------
    def begin(self, intents: Iterable[Intent], now: float) -> list[Acquisition]:
        """Record ACQUIRING intents before any vendor call is made (not synced: see above)."""
        with self._lock:
            out = [
                Acquisition(
                    id=uuid.uuid4().hex,
                    backend=i.backend,
                    resource_id=i.resource_id,
                    devices=i.devices,
                    request=tuple(sorted(i.request)),
                    state=AcqState.ACQUIRING,
                    created_at=now,
                    held_at_most=i.held_at_most,
                )
                for i in intents
            ]
            self._write(out, durable=False)
            return out

    def acquired(self, acq_id: str, token: str, now: float) -> Acquisition:
        """ACQUIRING → ALLOCATED, durably: the token is new and nothing else knows it."""
        with self._lock:
            acq = self._need(acq_id).model_copy(
                update={"state": AcqState.ALLOCATED, "token": token, "acquired_at": now}
            )
            self._write([acq])
            return acq

    def abandon(self, acq_ids: Iterable[str]) -> None:
        """Drop ACQUIRING records whose acquire failed or never started (nothing is held)."""
        with self._lock, self._journal.transaction(durable=False) as txn:
            for acq_id in acq_ids:
                acq = txn.get(acq_id)
                if acq is not None and acq.state is AcqState.ACQUIRING:
                    txn.delete(acq_id)

    def late_acquired(self, acq_id: str, token: str, reason: str, now: float) -> None:
        """An acquire that missed its Allocate's deadline got a token: release it at once."""
        with self._lock:
            acq = self._need(acq_id).model_copy(update={"token": token, "acquired_at": now})
            self._write([self._releasing(acq, reason, now)])

    def lose(self, acq_id: str, now: float) -> None:
        """An acquire never answered at all: its token (if any) is unknown."""
        with self._lock:
            acq = self._need(acq_id)
            self._write([acq.model_copy(update={"state": AcqState.LOST, "released_at": now})])

    def _need(self, acq_id: str) -> Acquisition:
        acq = self._journal.get(acq_id)
        if acq is None:
            raise KeyError(acq_id)
        return acq

    # -- reconcile against PodResources -----------------------------------------------------
    def interrupt(self, now: float, hold: float = 0.0, why: str = "") -> None:
        """The view of the kubelet broke (List failed, kubelet restarted): restart clocks."""
        with self._lock:
            self._unheld_since.clear()
            if hold > 0 and now + hold > self._hold_until:
                self._hold_until = now + hold
                log.info("releases on hold", extra={"seconds": hold, "why": why})

    def end_hold(self, why: str) -> None:
        """The kubelet has caught up (every running pod that asks for the resource is
        listed): decide releases again without waiting for the rest of the hold."""
        with self._lock:
            if self._hold_until:
                self._hold_until = 0.0
                log.info("releases no longer on hold", extra={"why": why})

    def reconcile(
        self,
        held: Mapping[frozenset[str], ContainerRef],
        now: float,
        finished: Callable[[ContainerRef], bool] | None = None,
    ) -> int:
        """Apply one successful PodResources List; returns how many records changed.

        ``finished``: whether a container has ended and can never run again (from the
        apiserver's view of the node's pods): what it held is released at once, without
        grace or hold. Without it, absence from the List for the grace period decides.
        """
        with self._lock:
            acqs = self._journal.snapshot()
            changes: dict[str, Acquisition] = {}
            groups: dict[tuple[frozenset[str], str], list[Acquisition]] = {}
            for acq in acqs.values():
                if acq.state in _WAITING_FOR_POD:
                    groups.setdefault((acq.request_set, acq.backend), []).append(acq)
            for (request, _backend), group in groups.items():
                group.sort(key=lambda a: (a.acquired_at or a.created_at, a.id), reverse=True)
                ref = held.get(request)
                accs = group
                if finished is not None:
                    # A holder that ended for good frees what it held at once; so does the
                    # container listed with these devices, if it has ended for good.
                    over = ref is not None and finished(ref)
                    accs = []
                    for acq in group:
                        if over or (acq.holder is not None and finished(acq.holder)):
                            self._unheld_since.pop(acq.id, None)
                            who = acq.holder or ref
                            why = f"container {who} ended and cannot run again"
                            changes[acq.id] = self._releasing(acq, why, now)
                        else:
                            accs.append(acq)
                    if not accs:
                        continue
                if ref is None:
                    for acq in self._not_held(accs, now):
                        changes[acq.id] = acq
                    continue
                winner, older = accs[0], accs[1:]
                for acq in older:
                    self._unheld_since.pop(acq.id, None)
                    why = "superseded by a newer Allocate of these devices"
                    changes[acq.id] = self._releasing(acq, why, now)
                self._unheld_since.pop(winner.id, None)
                if winner.state is AcqState.BOUND and winner.holder != ref:
                    why = f"pod {winner.holder} is gone; its devices are held by {ref}"
                    changes[winner.id] = self._releasing(winner, why, now)
                elif winner.state is AcqState.ALLOCATED:
                    changes[winner.id] = winner.model_copy(
                        update={"state": AcqState.BOUND, "holder": ref, "bound_at": now}
                    )
                    log.info(
                        "acquisition bound to container",
                        extra={
                            "acquisition": winner.id,
                            "backend": winner.backend,
                            "container": str(ref),
                            "devices": ",".join(winner.devices),
                        },
                    )
            pruned = self._prune({**acqs, **changes}, now)
            if changes or pruned:
                with self._journal.transaction() as txn:
                    for acq in changes.values():
                        txn.put(acq.id, acq)
                    for acq_id in pruned:
                        txn.delete(acq_id)
            return len(changes) + len(pruned)

    def _not_held(self, accs: list[Acquisition], now: float) -> list[Acquisition]:
        out = []
        for acq in accs:
            since = self._unheld_since.setdefault(acq.id, now)
            if now < self._hold_until or now - since < self.release_grace:
                continue
            del self._unheld_since[acq.id]
            devices = ",".join(acq.request)
            reason = (
                f"pod {acq.holder} no longer holds devices {devices}"
                if acq.holder
                else f"no container was listed with devices {devices}"
            )
            out.append(self._releasing(acq, reason, now))
        return out

    @staticmethod
    def _releasing(acq: Acquisition, reason: str, now: float) -> Acquisition:
        update = {"state": AcqState.RELEASING, "release_reason": reason, "next_release_at": now}
        log.info(
            "releasing acquisition",
            extra={
                "acquisition": acq.id,
                "backend": acq.backend,
                "container": str(acq.holder or ""),
                "reason": reason,
            },
        )
        return acq.model_copy(update=update)

    def _prune(self, acqs: Mapping[str, Acquisition], now: float) -> list[str]:
        """Tombstones older than the TTL, and all but the newest ``max_tombstones``."""
        ended = sorted(
            (a for a in acqs.values() if a.state in _TERMINAL),
            key=lambda a: a.released_at or a.created_at,
            reverse=True,
        )
        return [
            a.id
            for i, a in enumerate(ended)
            if i >= self.max_tombstones
            or now - (a.released_at or a.created_at) > self.tombstone_ttl
        ]

    # -- releases ---------------------------------------------------------------------------
    def mark_releasing(self, acq_ids: Iterable[str], reason: str, now: float) -> None:
        """Release at once (Allocate rolled back); written before the vendor call."""
        with self._lock:
            self._write([self._releasing(self._need(i), reason, now) for i in acq_ids])

    def due_releases(self, now: float) -> list[Debt]:
        return [
            _debt(a)
            for a in self.snapshot()
            if a.state is AcqState.RELEASING and a.next_release_at <= now
        ]

    def owes(self, debt_id: str) -> bool:
        acq = self.get(debt_id)
        return acq is not None and acq.state is AcqState.RELEASING

    def debt(self, acq_id: str) -> Debt:
        """The release owed for a RELEASING acquisition (to pay it at once)."""
        return _debt(self._need(acq_id))

    def next_release_due(self) -> float | None:
        due = [a.next_release_at for a in self.snapshot() if a.state is AcqState.RELEASING]
        return min(due) if due else None

    def release_succeeded(self, acq_id: str, now: float) -> None:
        with self._lock:
            acq = self._need(acq_id)
            done = acq.model_copy(update={"state": AcqState.RELEASED, "released_at": now})
            pruned = self._prune({**self._journal.snapshot(), acq_id: done}, now)
            with self._journal.transaction() as txn:
                txn.put(acq_id, done)
                for old in pruned:
                    txn.delete(old)

    def release_failed(self, acq_id: str, error: str, now: float) -> float:
        """Count a failed attempt and schedule the next; returns the delay."""
        with self._lock:
            acq = self._need(acq_id)
            attempts = acq.release_attempts + 1
            delay = self.backoff.delay(attempts)
            update = {
                "release_attempts": attempts,
                "last_error": error,
                "next_release_at": now + delay,
            }
            self._write([acq.model_copy(update=update)])
            return delay


def _debt(acq: Acquisition) -> Debt:
    expires = (
        acq.acquired_at + acq.held_at_most
        if acq.acquired_at is not None and acq.held_at_most
        else None
    )
    return Debt(acq.id, acq.backend, acq.token or "", acq.release_reason, expires)


def _migrate_checkpoint(old: Path, journal: Journal[Acquisition]) -> None:
    """Carry the acquisitions of an earlier version's whole-file checkpoint into the journal.

    Without this an upgrade would forget every token the node holds (leaking the sessions).
    The old file is removed once its records are durably in the journal.
    """
    if not old.exists():
        return
    try:
        data = CheckpointFile(old, LedgerData, LEGACY_VERSION).load()
    except CheckpointError as err:
        log.error("old checkpoint unreadable; not migrated", extra={"error": str(err)})
        data = None
    if data is not None:
        with journal.transaction() as txn:
            for acq in data.acquisitions:
                if txn.get(acq.id) is None:
                    txn.put(acq.id, acq)
        log.info("migrated the old checkpoint", extra={"acquisitions": len(data.acquisitions)})
    old.unlink()
