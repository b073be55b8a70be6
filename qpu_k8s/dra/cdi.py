"""CDI spec files: how the env contract reaches the containers of a prepared claim.

One spec file per claim, ``<cdi dir>/quantum.example.com-qpu_<claim uid>.json``, with one
CDI device named after the claim UID whose ``containerEdits.env`` is the rendered job
environment (DESIGN.md section 4). Every allocated device of the claim returns that one CDI
ID (``quantum.example.com/qpu=<uid>``): the env contract lists all of a container's QPUs in
one ``QRMI_JOB_QPU_RESOURCES``, so the claim's QPUs are injected together.

Exposure: the env holds the vendor credentials (qrmi in the pod reads them from there). The
file is written 0600 into a root-only directory (``/var/run/cdi`` is tmpfs: gone on reboot),
atomically (temp file, rename), and read only by the container runtime. It never goes
to our checkpoint, logs or the apiserver.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from qpu_k8s.core.names import API_GROUP

CDI_VERSION = "0.6.0"  # containerEdits.env has been in the spec since 0.3; 0.6 is widely read
VENDOR = API_GROUP
CLASS = "qpu"
KIND = f"{VENDOR}/{CLASS}"
_PREFIX = f"{VENDOR}-{CLASS}_"
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class CdiWriter:
    """Writes and removes the per-claim CDI spec files in one directory."""

    def __init__(self, cdi_dir: Path) -> None:
        self.cdi_dir = cdi_dir

    @staticmethod
    def device_id(claim_uid: str) -> str:
        """The fully qualified CDI device name the kubelet passes to the runtime."""
        return f"{KIND}={claim_uid}"

    def path(self, claim_uid: str) -> Path:
        if not _UID.fullmatch(claim_uid):
            raise ValueError(f"claim UID {claim_uid!r} cannot name a CDI device")
        return self.cdi_dir / f"{_PREFIX}{claim_uid}.json"

    def spec(self, claim_uid: str, env: Mapping[str, str]) -> dict[str, object]:
        return {
            "cdiVersion": CDI_VERSION,
            "kind": KIND,
            "devices": [
                {
                    "name": claim_uid,
                    "containerEdits": {"env": [f"{k}={v}" for k, v in sorted(env.items())]},
                }
            ],
        }

    def write(self, claim_uid: str, env: Mapping[str, str]) -> str:
        """Write (or replace) the claim's spec atomically, mode 0600; returns its CDI ID.

        Atomic (temp file + rename) so the runtime never reads half a spec; not synced:
        the directory is tmpfs (gone on a reboot anyway, when every claim is prepared
        again), so a sync would buy nothing and cost a disk flush where it is not tmpfs.
        """
        target = self.path(claim_uid)
        data = json.dumps(self.spec(claim_uid, env), sort_keys=True).encode()
        # Named for the writing thread, so no two writers share one (a leftover of a
        # crashed process is truncated); the runtime reads only the final name.
        tmp = self.cdi_dir / f".{target.name}.{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:  # the first spec since boot (tmpfs) or a wiped directory
            self.cdi_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                left = memoryview(data)
                while left:
                    left = left[os.write(fd, left) :]
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.device_id(claim_uid)

    def exists(self, claim_uid: str) -> bool:
        return self.path(claim_uid).is_file()

    def remove(self, claim_uid: str) -> bool:
        """Delete the claim's spec; False when there was none (a repeated unprepare)."""
        try:
            self.path(claim_uid).unlink()
        except FileNotFoundError:
            return False
        return True

    def claims(self) -> set[str]:
        """Claim UIDs that have a spec file here (to find leftovers at start-up)."""
        if not self.cdi_dir.is_dir():
            return set()
        return {
            p.name[len(_PREFIX) : -len(".json")]
            for p in self.cdi_dir.iterdir()
            if p.name.startswith(_PREFIX) and p.name.endswith(".json")
        }

    def read_env(self, claim_uid: str) -> dict[str, str]:
        """The env a claim's spec injects (tests, and diagnostics that print names only)."""
        doc = json.loads(self.path(claim_uid).read_text(encoding="utf-8"))
        out: dict[str, str] = {}
        for item in doc["devices"][0]["containerEdits"]["env"]:
            key, _, value = item.partition("=")
            out[key] = value
        return out
