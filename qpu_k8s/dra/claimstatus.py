"""ResourceClaim ``status.devices``: a prepared claim says what each of its QPUs holds.

After NodePrepareResources acquired a claim's devices, the driver writes one
``AllocatedDeviceStatus`` per device of ours (``resource.k8s.io/v1``, GA in 1.37): driver,
pool, device, a ``Ready`` condition, and ``data`` with backend, QRMI resource id and type,
the session (its id, or only a fingerprint where the token is a bearer secret: see
:attr:`qpu_k8s.core.vendors.VendorProfile.token_is_public_id`), session mode and max TTL,
the backend's pending jobs as last probed before the acquire, and when it was acquired.
``kubectl describe resourceclaim`` shows it; nothing in it is a credential. A device
allocated with admin access holds nothing: its entry says ``adminAccess`` and no session
(:func:`admin_device_status`).

Why a background writer: the status is for people and tools, the prepare is what the pod
waits for. A status write that fails (apiserver away, RBAC missing) must neither fail nor
slow the prepare, so :class:`ClaimStatusPublisher` writes from its own thread, retries a
transient failure with backoff until it lands or the claim is unprepared, and drops it for
good when the apiserver says it never will (claim gone or recreated, forbidden, invalid),
with a log line and the ``claim_status_writes_total`` metric either way.

Written by server-side apply of the ``status`` subresource under one field manager per
node (the list is keyed by driver, pool and device, so each writer owns its entries only),
with the claim's UID in the body so a write never lands on a recreated claim of the same
name. The apiserver authorizes it per driver (``resourceclaims/driver``, 1.36+): a
single-node allocation (node-bound pool) needs ``associated-node:patch``, one that names no
single node (a shared, cluster-wide pool) ``arbitrary-node:patch``.

Unprepare leaves it: the status says what the claim held while it was prepared, and the
apiserver drops ``status.devices`` with the allocation when the claim is deallocated.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter

from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.timestamps import rfc3339
from qpu_k8s.core.vendors import profile, token_fingerprint
from qpu_k8s.node.releases import Backoff
from qpu_k8s.resourceslices.policy import binding_conditions

from . import metrics

log = logging.getLogger(__name__)

READY = "Ready"
WRITES: Counter = metrics.CLAIM_STATUS_WRITES


class StatusWriteError(Exception):
    """A status write failed; ``permanent`` when retrying cannot help; ``kind`` a label."""

    def __init__(self, message: str, *, permanent: bool, kind: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.kind = kind


class StatusWriter(Protocol):
    """Applies a claim's ``status.devices`` entries of ours (:class:`.claims.KubeClaims`)."""

    def apply_device_status(
        self,
        namespace: str,
        name: str,
        uid: str,
        devices: list[dict[str, Any]],
        field_manager: str,
    ) -> None: ...


def device_status(
    *,
    driver: str,
    pool: str,
    device: str,
    backend: QuantumBackend,
    token: str,
    acquired_at: float,
    node: str,
    pending_jobs: int | None = None,
    share_id: str | None = None,
    lanes: int | None = None,
) -> dict[str, Any]:
    """One ``AllocatedDeviceStatus`` for a device acquired with ``token`` on ``backend``
    (the backend as acquired: per-claim session mode and TTL already applied)."""
    spec = backend.spec
    vendor = profile(spec.type)
    data: dict[str, Any] = {
        "backend": backend.name,
        "resourceId": spec.resource_id,
        "resourceType": spec.type.value,
        "node": node,
        "holdsSession": vendor.session_based,
        "acquiredAt": rfc3339(acquired_at),
    }
    if vendor.session_based:
        if vendor.token_is_public_id:
            data["sessionId"] = token
        else:
            data["sessionFingerprint"] = token_fingerprint(token)
        if vendor.session_mode_key:
            mode = spec.config.get(vendor.session_mode_key) or vendor.default_session_mode
            if mode:
                data["sessionMode"] = mode
        ttl = vendor.held_at_most(spec.config)
        if ttl:
            data["sessionMaxTtlSeconds"] = ttl
    if pending_jobs is not None:
        data["pendingJobsAtAcquire"] = pending_jobs
    if lanes is not None:
        data["lanes"] = lanes
    what = "a session" if vendor.session_based else "access"
    reason = "SessionAcquired" if vendor.session_based else "Acquired"
    message = (
        f"{spec.resource_id} ({spec.type.value}) holds {what} for this claim, "
        f"acquired on node {node}"
    )
    return _entry(
        driver, pool, device, _ready(reason, message, acquired_at), data, share_id=share_id
    )


def _ready(reason: str, message: str, at: float) -> dict[str, Any]:
    return {
        "type": READY,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(at),
    }


def _entry(
    driver: str,
    pool: str,
    device: str,
    ready: dict[str, Any],
    data: dict[str, Any],
    *,
    share_id: str | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"driver": driver, "pool": pool, "device": device}
    if share_id:
        entry["shareID"] = share_id  # the apiserver keys entries by it for shared devices
    return {**entry, "conditions": [ready], "data": data}


def admin_device_status(
    *, driver: str, pool: str, device: str, backend: QuantumBackend, node: str, at: float
) -> dict[str, Any]:
    """The ``AllocatedDeviceStatus`` of a device allocated with admin access: the pod
    reads the QPU's metadata and status; nothing was acquired, no lane is taken."""
    spec = backend.spec
    message = (
        f"admin access to {spec.resource_id} ({spec.type.value}) on node {node}: "
        "metadata and status only, no session acquired, no lane taken"
    )
    data = {
        "backend": backend.name,
        "resourceId": spec.resource_id,
        "resourceType": spec.type.value,
        "node": node,
        "adminAccess": True,
        "holdsSession": False,
    }
    return _entry(driver, pool, device, _ready("AdminAccess", message, at), data)


def acquired_condition(driver: str, ready: dict[str, Any]) -> dict[str, Any]:
    """The binding condition of a device acquired before its pod is bound (True), saying
    what ``ready`` (the device's ``Ready`` condition) says."""
    return {**ready, "type": binding_conditions(driver)[0]}


def acquire_failed_entry(
    *, driver: str, pool: str, device: str, backend: str, node: str, reason: str, message: str
) -> dict[str, Any]:
    """The ``status.devices`` entry of a device whose acquire before binding failed: the
    binding failure condition, on which the scheduler places the claim again. ``message``
    names the backend and the fix; it never holds a credential (errors are redacted)."""
    return {
        "driver": driver,
        "pool": pool,
        "device": device,
        "conditions": [
            {
                "type": binding_conditions(driver)[1],
                "status": "True",
                "reason": reason,
                "message": message[:1024],
                "lastTransitionTime": rfc3339(time.time()),
            }
        ],
        "data": {"backend": backend, "node": node},
    }


@dataclass
class _Pending:
    namespace: str
    name: str
    devices: list[dict[str, Any]]
    failures: int = 0
    due: float = field(default_factory=time.monotonic)


class ClaimStatusPublisher:
    """Writes claims' device status in the background (see the module docstring)."""

    def __init__(
        self,
        writer: StatusWriter,
        field_manager: str,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.writer = writer
        self.field_manager = field_manager
        self.backoff = backoff or Backoff(base=1.0, cap=60.0)
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._written: set[str] = set()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def publish(self, namespace: str, name: str, uid: str, devices: list[dict[str, Any]]) -> None:
        """Write (or rewrite) the claim's entries soon; never blocks on the apiserver."""
        with self._cond:
            self._written.discard(uid)
            self._pending[uid] = _Pending(namespace, name, devices)
            self._cond.notify()

    def needs(self, uid: str) -> bool:
        """Whether the claim's status is neither written nor on its way (a repeated
        prepare then publishes again: after a restart, or after a permanent failure)."""
        with self._cond:
            return uid not in self._written and uid not in self._pending

    def forget(self, uid: str) -> None:
        """The claim is unprepared: nothing more to write for it."""
        with self._cond:
            self._pending.pop(uid, None)
            self._written.discard(uid)

    def written(self, uid: str) -> bool:
        with self._cond:
            return uid in self._written

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="claim-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    due = [(u, p) for u, p in self._pending.items() if p.due <= now]
                    if due:
                        break
                    nxt = min((p.due for p in self._pending.values()), default=None)
                    self._cond.wait(None if nxt is None else nxt - now)
                if self._stopped:
                    return
            for uid, item in due:
                self._write(uid, item)

    def _write(self, uid: str, item: _Pending) -> None:
        try:
            self.writer.apply_device_status(
                item.namespace, item.name, uid, item.devices, self.field_manager
            )
        except StatusWriteError as err:
            self._failed(uid, item, err.kind, str(err), permanent=err.permanent)
            return
        except Exception as err:
            self._failed(uid, item, "error", f"{type(err).__name__}: {err}", permanent=False)
            return
        with self._cond:
            if self._pending.get(uid) is item:
                del self._pending[uid]
                self._written.add(uid)
        WRITES.labels("ok").inc()
        log.info(
            "claim status written",
            extra={"claim": f"{item.namespace}/{item.name}", "uid": uid},
        )

    def _failed(self, uid: str, item: _Pending, kind: str, error: str, *, permanent: bool) -> None:
        WRITES.labels(kind).inc()
        with self._cond:
            if self._pending.get(uid) is not item:
                return  # forgotten or replaced meanwhile
            if permanent:
                del self._pending[uid]
            else:
                item.failures += 1
                item.due = time.monotonic() + self.backoff.delay(item.failures)
        log.warning(
            "claim status not written" + ("" if permanent else "; will retry"),
            extra={
                "claim": f"{item.namespace}/{item.name}",
                "uid": uid,
                "error": error,
                "attempts": item.failures,
            },
        )
