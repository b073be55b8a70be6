"""The DRA driver's checkpoint: prepared claims and their acquisitions, with the boot ID.

Why a checkpoint: the kubelet prepares a claim once per node and unprepares it once, and
either call may be repeated after a crash. To answer a repeat with the same CDI IDs and to
release exactly what was acquired (no leak, no double release) the driver must remember,
across restarts, which claim holds which acquisition token.

Why the boot ID: after a reboot the vendor sessions of the old boot are orphans (no pod uses
them any more) and the CDI specs in tmpfs are gone; the kubelet will prepare the claims
again. So on start-up a checkpoint from another boot is cleaned (release, remove CDI spec)
and dropped, while one from this boot (a plugin restart) is kept as it is.

Holds acquisition tokens and object identities only: never credential values (a per-claim
Secret is remembered by name and read again when needed).
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qpu_k8s.core.checkpoint import CheckpointError, CheckpointFile

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "dra-checkpoint.json"
VERSION = 1


class ClaimPhase(StrEnum):
    # Written before the first acquire: a crash here may leave acquisitions to release.
    PREPARING = "preparing"
    PREPARED = "prepared"


class DeviceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: str
    pool: str
    device: str
    backend: str
    token: str | None = None  # None until acquired
    released: bool = False
    # Per-request overrides from the claim's opaque config, by reference only.
    credentials_secret: str | None = None
    session_mode: str | None = None
    session_max_ttl_seconds: int | None = None


class ClaimRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uid: str
    namespace: str
    name: str
    phase: ClaimPhase = ClaimPhase.PREPARING
    devices: list[DeviceRecord] = Field(default_factory=list)
    cdi_device_id: str | None = None


class DriverState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    boot_id: str
    claims: dict[str, ClaimRecord] = Field(default_factory=dict)


class StateStore:
    """The checkpoint file plus the in-memory copy; every mutation is saved at once."""

    def __init__(self, state_dir: Path, boot_id: str) -> None:
        self.file = CheckpointFile(state_dir / CHECKPOINT_NAME, DriverState, VERSION)
        self.boot_id = boot_id
        self._lock = threading.RLock()
        self.state = DriverState(boot_id=boot_id)
        self.previous_boot: DriverState | None = None

    def load(self) -> None:
        """Read the checkpoint. Claims of another boot move to ``previous_boot`` to clean.

        A corrupt checkpoint is moved aside (``*.corrupt``) and the driver starts empty:
        refusing to start would stop every prepare on the node, while the cost of going on
        is that the acquisitions it listed are not released by us (they expire at the
        vendor's session TTL) and a repeated prepare of those claims acquires anew.
        """
        with self._lock:
            try:
                saved = self.file.load()
            except CheckpointError as err:
                aside = self.file.path.with_suffix(f".corrupt-{int(time.time())}")
                self.file.path.replace(aside)
                log.error(
                    "checkpoint unreadable, moved aside; starting empty",
                    extra={"error": str(err), "moved_to": str(aside)},
                )
                saved = None
            if saved is None:
                self.state = DriverState(boot_id=self.boot_id)
            elif saved.boot_id != self.boot_id:
                self.previous_boot = saved
                self.state = DriverState(boot_id=self.boot_id)
            else:
                self.state = saved
            self.file.save(self.state)

    def get(self, uid: str) -> ClaimRecord | None:
        with self._lock:
            rec = self.state.claims.get(uid)
            return rec.model_copy(deep=True) if rec else None

    def put(self, record: ClaimRecord) -> None:
        with self._lock:
            self.state.claims[record.uid] = record.model_copy(deep=True)
            self.file.save(self.state)

    def drop(self, uid: str) -> None:
        with self._lock:
            if self.state.claims.pop(uid, None) is not None:
                self.file.save(self.state)

    def claims(self) -> list[ClaimRecord]:
        with self._lock:
            return [c.model_copy(deep=True) for c in self.state.claims.values()]
