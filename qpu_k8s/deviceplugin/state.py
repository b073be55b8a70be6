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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qpu_k8s.core.checkpoint import CheckpointError, CheckpointFile
from qpu_k8s.deviceplugin import metrics

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "acquisitions.json"
CHECKPOINT_VERSION = 1


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
    """What the checkpoint file holds."""

    acquisitions: list[Acquisition] = Field(default_factory=list)


@dataclass(frozen=True)
class Intent:
    """What Allocate is about to acquire: one backend's lanes of one container request."""

    backend: str
    resource_id: str
    devices: tuple[str, ...]
    request: tuple[str, ...]
    held_at_most: int | None = None


@dataclass(frozen=True)
class Backoff:
    """Delay before release attempt ``n + 1`` after ``n`` failures: base * 2**(n-1), capped."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2.0 ** max(0, failures - 1)))


class Ledger:
    """The acquisitions of this node, persisted on every transition; thread-safe.

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
        self._file = CheckpointFile(path, LedgerData, CHECKPOINT_VERSION)
        self._lock = threading.RLock()
        self._acqs: dict[str, Acquisition] = {}
        self._unheld_since: dict[str, float] = {}
        self._hold_until = 0.0
        self._known_backends: set[str] = set()

    # -- persistence ------------------------------------------------------------------------
    def load(self, now: float) -> None:
        """Read the checkpoint. Acquires that were in flight when we died become LOST.

        A corrupt checkpoint is moved aside (``.corrupt-<time>``) and reported: its tokens
        cannot be trusted, and refusing to start would take the node's QPUs away.
        """
        with self._lock:
            try:
                data = self._file.load()
            except CheckpointError as err:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(now)}")
                self.path.replace(aside)
                log.error(
                    "checkpoint unreadable; moved aside, starting empty",
                    extra={"error": str(err), "moved_to": str(aside)},
                )
                data = None
            self._acqs = {a.id: a for a in (data.acquisitions if data else [])}
            for acq in list(self._acqs.values()):
                if acq.state is AcqState.ACQUIRING:
                    self._set(acq.model_copy(update={"state": AcqState.LOST, "released_at": now}))
                    metrics.ACQUISITIONS_LOST.labels(acq.backend).inc()
                    log.error(
                        "acquire was in flight when the plugin stopped: token unknown, the "
                        "vendor session (if any) can only expire on its own",
                        extra={
                            "acquisition": acq.id,
                            "backend": acq.backend,
                            "held_at_most_seconds": _bound(acq.held_at_most),
                        },
                    )
            # Our own start breaks the observation of the kubelet: restart every clock.
            self._unheld_since.clear()
            self._save()
            live = [a for a in self._acqs.values() if a.state in HOLDING]
            log.info(
                "checkpoint loaded",
                extra={"path": str(self.path), "live": len(live), "records": len(self._acqs)},
            )

    def _save(self) -> None:
        data = LedgerData(acquisitions=sorted(self._acqs.values(), key=lambda a: a.created_at))
        self._file.save(data)
        counts: dict[str, int] = {}
        for a in self._acqs.values():
            if a.state in HOLDING:
                counts[a.backend] = counts.get(a.backend, 0) + 1
        metrics.set_live(counts, self._known_backends)
        self._known_backends = set(counts)

    def _set(self, acq: Acquisition) -> None:
        self._acqs[acq.id] = acq

    def commit(self) -> None:
        """Write the current state (after a batch of in-memory transitions)."""
        with self._lock:
            self._save()

    # -- reads ------------------------------------------------------------------------------
    def snapshot(self) -> list[Acquisition]:
        with self._lock:
            return sorted(self._acqs.values(), key=lambda a: a.created_at)

    def get(self, acq_id: str) -> Acquisition | None:
        with self._lock:
            return self._acqs.get(acq_id)

    def live(self) -> list[Acquisition]:
        return [a for a in self.snapshot() if a.state in HOLDING]

    # -- the Allocate path ------------------------------------------------------------------
    def begin(self, intents: Iterable[Intent], now: float) -> list[Acquisition]:
        """Record ACQUIRING intents and write them before any vendor call is made."""
        with self._lock:
            out = []
            for i in intents:
                acq = Acquisition(
                    id=uuid.uuid4().hex,
                    backend=i.backend,
                    resource_id=i.resource_id,
                    devices=i.devices,
                    request=tuple(sorted(i.request)),
                    state=AcqState.ACQUIRING,
                    created_at=now,
                    held_at_most=i.held_at_most,
                )
                self._set(acq)
                out.append(acq)
            self._save()
            return out

    def acquired(self, acq_id: str, token: str, now: float) -> Acquisition:
        """ACQUIRING → ALLOCATED in memory; the caller commits at once (the token is new)."""
        with self._lock:
            acq = self._acqs[acq_id].model_copy(
                update={"state": AcqState.ALLOCATED, "token": token, "acquired_at": now}
            )
            self._set(acq)
            return acq

    def abandon(self, acq_ids: Iterable[str]) -> None:
        """Drop ACQUIRING records whose acquire failed or never started (nothing is held)."""
        with self._lock:
            for acq_id in acq_ids:
                acq = self._acqs.get(acq_id)
                if acq is not None and acq.state is AcqState.ACQUIRING:
                    del self._acqs[acq_id]

    def late_acquired(self, acq_id: str, token: str, reason: str, now: float) -> None:
        """An acquire that missed its Allocate's deadline got a token: release it at once."""
        with self._lock:
            acq = self._acqs[acq_id].model_copy(update={"token": token, "acquired_at": now})
            self._set(acq)
            self._to_releasing(acq, reason, now)
            self._save()

    def lose(self, acq_id: str, now: float) -> None:
        """An acquire never answered at all: its token (if any) is unknown."""
        with self._lock:
            acq = self._acqs[acq_id]
            self._set(acq.model_copy(update={"state": AcqState.LOST, "released_at": now}))
            self._save()

    # -- reconcile against PodResources -----------------------------------------------------
    def interrupt(self, now: float, hold: float = 0.0, why: str = "") -> None:
        """The view of the kubelet broke (List failed, kubelet restarted): restart clocks."""
        with self._lock:
            self._unheld_since.clear()
            if hold > 0 and now + hold > self._hold_until:
                self._hold_until = now + hold
                log.info("releases on hold", extra={"seconds": hold, "why": why})

    def reconcile(self, held: Mapping[frozenset[str], ContainerRef], now: float) -> int:
        """Apply one successful PodResources List; returns how many records changed."""
        with self._lock:
            changed = 0
            groups: dict[tuple[frozenset[str], str], list[Acquisition]] = {}
            for acq in self._acqs.values():
                if acq.state in _WAITING_FOR_POD:
                    groups.setdefault((acq.request_set, acq.backend), []).append(acq)
            for (request, _backend), accs in groups.items():
                accs.sort(key=lambda a: (a.acquired_at or a.created_at, a.id), reverse=True)
                ref = held.get(request)
                if ref is None:
                    changed += self._not_held(accs, now)
                    continue
                winner, older = accs[0], accs[1:]
                for acq in older:
                    self._unheld_since.pop(acq.id, None)
                    self._to_releasing(acq, "superseded by a newer Allocate of these devices", now)
                    changed += 1
                self._unheld_since.pop(winner.id, None)
                if winner.state is AcqState.BOUND and winner.holder != ref:
                    self._to_releasing(
                        winner, f"pod {winner.holder} is gone; its devices are held by {ref}", now
                    )
                    changed += 1
                elif winner.state is AcqState.ALLOCATED:
                    self._set(
                        winner.model_copy(
                            update={"state": AcqState.BOUND, "holder": ref, "bound_at": now}
                        )
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
                    changed += 1
            changed += self._prune(now)
            if changed:
                self._save()
            return changed

    def _not_held(self, accs: list[Acquisition], now: float) -> int:
        changed = 0
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
            self._to_releasing(acq, reason, now)
            changed += 1
        return changed

    def _to_releasing(self, acq: Acquisition, reason: str, now: float) -> None:
        update = {"state": AcqState.RELEASING, "release_reason": reason, "next_release_at": now}
        self._set(acq.model_copy(update=update))
        log.info(
            "releasing acquisition",
            extra={
                "acquisition": acq.id,
                "backend": acq.backend,
                "container": str(acq.holder or ""),
                "reason": reason,
            },
        )

    def _prune(self, now: float) -> int:
        """Forget tombstones older than the TTL, and all but the newest ``max_tombstones``."""
        ended = sorted(
            (a for a in self._acqs.values() if a.state in _TERMINAL),
            key=lambda a: a.released_at or a.created_at,
            reverse=True,
        )
        doomed = [
            a.id
            for i, a in enumerate(ended)
            if i >= self.max_tombstones
            or now - (a.released_at or a.created_at) > self.tombstone_ttl
        ]
        for acq_id in doomed:
            del self._acqs[acq_id]
        return len(doomed)

    # -- releases ---------------------------------------------------------------------------
    def mark_releasing(self, acq_ids: Iterable[str], reason: str, now: float) -> None:
        """Release at once (Allocate rolled back); written before the vendor call."""
        with self._lock:
            for acq_id in acq_ids:
                self._to_releasing(self._acqs[acq_id], reason, now)
            self._save()

    def due_releases(self, now: float) -> list[Acquisition]:
        with self._lock:
            return [
                a
                for a in self._acqs.values()
                if a.state is AcqState.RELEASING and a.next_release_at <= now
            ]

    def next_release_due(self) -> float | None:
        with self._lock:
            due = [a.next_release_at for a in self._acqs.values() if a.state is AcqState.RELEASING]
            return min(due) if due else None

    def release_succeeded(self, acq_id: str, now: float) -> None:
        with self._lock:
            acq = self._acqs[acq_id]
            self._set(acq.model_copy(update={"state": AcqState.RELEASED, "released_at": now}))
            self._prune(now)
            self._save()

    def release_failed(self, acq_id: str, error: str, now: float) -> float:
        """Count a failed attempt and schedule the next; returns the delay."""
        with self._lock:
            acq = self._acqs[acq_id]
            attempts = acq.release_attempts + 1
            delay = self.backoff.delay(attempts)
            self._set(
                acq.model_copy(
                    update={
                        "release_attempts": attempts,
                        "last_error": error,
                        "next_release_at": now + delay,
                    }
                )
            )
            self._save()
            return delay


def _bound(seconds: int | None) -> str:
    return "unknown" if seconds is None else str(seconds)
