"""Crash-safe, versioned JSON checkpoints for the node agents' live state.

A write goes to a temp file in the same directory, is fsynced, renamed over the old file and
the directory fsynced, so a SIGKILL or power loss leaves either the old or the new state,
never a torn file. A checksum catches corruption from elsewhere. Checkpoints hold acquisition
tokens and pod identities only, never credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


class CheckpointError(Exception):
    """The checkpoint exists but cannot be trusted (corrupt, wrong version or schema)."""


def _digest(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


class CheckpointFile(Generic[M]):
    """One checkpoint file holding one pydantic model, with its schema version."""

    def __init__(self, path: Path, model: type[M], version: int = 1) -> None:
        self.path = path
        self.model = model
        self.version = version

    def load(self) -> M | None:
        """The saved state, ``None`` when there is none yet; CheckpointError when unreadable."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as err:  # garbage on disk must not stop the agent starting
            raise CheckpointError(f"{self.path}: not a checkpoint ({err})") from None
        try:
            doc = json.loads(raw)
            data = doc["data"]
            payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.path}: not a checkpoint ({err})") from None
        if doc.get("version") != self.version:
            raise CheckpointError(
                f"{self.path}: version {doc.get('version')!r}, expected {self.version}"
            )
        if doc.get("checksum") != _digest(payload):
            raise CheckpointError(f"{self.path}: checksum mismatch (file corrupted)")
        try:
            return self.model.model_validate(data)
        except ValidationError as err:
            raise CheckpointError(f"{self.path}: invalid content: {err}") from None

    def save(self, state: M) -> None:
        data = state.model_dump(mode="json")
        payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
        doc = {"version": self.version, "checksum": _digest(payload), "data": data}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                # One dumps call: json.dump streams through the pure-Python encoder (3x slower).
                f.write(json.dumps(doc, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's boot ID: it changes on every reboot, so stale state can be recognised."""
    return path.read_text(encoding="utf-8").strip()
