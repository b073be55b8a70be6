"""Acquire before bind: the controller that holds a QPU before the scheduler binds the pod.

Devices of backends that opt in (``acquireBeforeBind``; node-bound backends, published in
this node's pool) carry binding conditions (:func:`~qpu_k8s.resourceslices.policy.
binding_conditions`). The scheduler copies them into the allocation and keeps the pod
unbound until the device's condition ``<driver>/acquired`` is True in the claim's
``status.devices``; ``<driver>/acquire-failed`` makes it drop the allocation and place the
claim again, on another QPU.

This node's driver is that controller, so the token never leaves the node agents: it
watches ResourceClaims (no field selector exists for an allocation's pool, so it filters
the stream), and for a claim allocated devices of its pool with our binding condition it
acquires through :meth:`.prepare.Preparer.acquire` (the prepare's own plan and acquire,
recorded in the journal in phase ``acquired``) and writes the condition with the status
data. NodePrepareResources then only writes the CDI spec. A failed acquire gives back what
it got (owed releases), probes the backend again at once (so an unhealthy QPU leaves the
slice before the scheduler retries) and writes the failure condition with the error kind
as reason. A claim deleted, deallocated or placed elsewhere before its pod was bound is
seen by the watch (or, after a restart, by the relist) and its sessions are given back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch

from qpu_k8s.core.credentials import redact
from qpu_k8s.core.kubeclient import as_object
from qpu_k8s.core.model import AccessMode, QuantumBackend, split_device_id
from qpu_k8s.resourceslices.build import GROUP
from qpu_k8s.resourceslices.policy import binding_conditions

from . import metrics
from .claimstatus import ClaimStatusPublisher, acquire_failed_entry
from .prepare import PrepareError, Preparer
from .state import ClaimPhase, ClaimRecord

log = logging.getLogger(__name__)

# What a failed acquire says (condition reason) and how to fix it, by PrepareError kind.
_FAILURES: dict[str, tuple[str, str]] = {
    "vendor_unavailable": ("VendorUnavailable", "the vendor is down or refusing; it is retried"),
    "vendor_timeout": ("VendorTimeout", "the vendor did not answer in time"),
    "vendor_auth": ("AuthRefused", "renew the backend's credentials Secret"),
    "vendor_config": ("BackendMisconfigured", "fix the QuantumBackend's config"),
    "vendor_not_found": ("BackendNotFound", "check the QuantumBackend's resourceId"),
    "vendor_vendor": ("VendorError", "see the driver's log"),
    "backend": ("BackendNotConfigured", "check the QuantumBackend and its credentials"),
    "credentials": ("CredentialsMissing", "create the Secret the claim names"),
    "params": ("InvalidParameters", "fix the claim's QPUClaimParameters"),
    "claim": ("ClaimInvalid", "fix the claim's requests"),
    "env": ("ClaimInvalid", "request lanes of one backend in separate claims"),
}


def acquires_before_bind(backend: QuantumBackend, default: bool) -> bool:
    """Whether ``backend``'s devices carry binding conditions: node-bound backends (the
    operator's shared slices do not carry them yet), per ``acquireBeforeBind`` or else the
    driver's default."""
    if backend.spec.access is not AccessMode.NODE_BOUND:
        return False
    chosen = backend.spec.acquire_before_bind
    return default if chosen is None else chosen


class ClaimWatcher:
    """Watches claims and acquires (or gives back) those of this pool with binding
    conditions; see the module docstring."""

    def __init__(
        self,
        preparer: Preparer,
        api: client.ApiClient,
        status: ClaimStatusPublisher,
        *,
        api_version: str = "v1",
        probe: Callable[[str], object] | None = None,
        settle: Callable[[], object] | None = None,
        workers: int = 4,
        timeout_seconds: int = 60,
    ) -> None:
        self.preparer = preparer
        self.custom = client.CustomObjectsApi(api)
        self.status = status
        self.api_version = api_version
        self.driver = preparer.driver
        self.pool = preparer.pool
        self.acquired, self.failed = binding_conditions(self.driver)
        self.probe = probe
        self.settle = settle
        self.timeout_seconds = timeout_seconds
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dra-bind")
        self._guard = threading.Lock()
        self._busy: set[str] = set()
        # The last event of a claim seen while a task of it ran: decided when it ends.
        self._missed: dict[str, tuple[str, dict[str, Any]]] = {}
        # uid -> the allocation whose acquire failed: not tried again until re-placed.
        self._failed_at: dict[str, tuple[str, ...]] = {}
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.listed = threading.Event()  # set after each relist (tests wait on it)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dra-claims", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._relist()
                while version and not self._stop.is_set():
                    version = self._follow(version)  # each watch resumes the last one
            except Exception as err:  # apiserver away, 410 Gone: list again
                if self._stop.is_set():
                    return
                log.warning("claim watch restarting", extra={"error": str(err)})
                self._stop.wait(1.0)

    def _relist(self) -> str:
        """Every claim once; records acquired for claims no longer ours are given back (a
        deletion missed while the driver was down)."""
        listed = as_object(
            self.custom.list_cluster_custom_object(
                GROUP, self.api_version, "resourceclaims", _request_timeout=30
            )
        )
        live = set()
        for claim in listed.get("items") or []:
            live.add((claim.get("metadata") or {}).get("uid"))
            self.seen("ADDED", claim)
        for rec in self.preparer.store.claims():
            if rec.phase is ClaimPhase.ACQUIRED and rec.uid not in live:
                self._submit(rec.uid, self._give_back, rec.uid, "the claim was deleted")
        self.listed.set()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _follow(self, version: str) -> str:
        """Watch from ``version`` until the server ends it; the version to resume from."""
        w = watch.Watch()  # type: ignore[no-untyped-call]
        self._watch = w
        try:
            for ev in w.stream(  # type: ignore[no-untyped-call]
                self.custom.list_cluster_custom_object,
                GROUP,
                self.api_version,
                "resourceclaims",
                resource_version=version,
                timeout_seconds=self.timeout_seconds,
                _request_timeout=self.timeout_seconds + 30,
            ):
                if self._stop.is_set():
                    break
                kind = str(ev.get("type"))
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {ev.get('object')}")
                self.seen(kind, ev.get("object") or {})
        finally:
            w.stop()  # type: ignore[no-untyped-call]
        return str(w.resource_version or version)

    # -- decisions ------------------------------------------------------------------------------
    def seen(self, kind: str, claim: dict[str, Any]) -> None:
        """One claim as the apiserver shows it now: acquire, give back, or nothing."""
        meta = claim.get("metadata") or {}
        uid, ns, name = str(meta.get("uid")), str(meta.get("namespace")), str(meta.get("name"))
        with self._guard:
            if uid in self._busy:  # e.g. deleted while its acquire runs: decide after it
                self._missed[uid] = (kind, claim)
                return
        ours = [] if kind == "DELETED" else self._ours(claim)
        held = self.preparer.store.journal.get(f"claim/{uid}")  # as of our last transaction
        rec = held.root if held is not None else None
        if isinstance(rec, ClaimRecord) and rec.phase is ClaimPhase.ACQUIRED:
            now = [f"{r['pool']}/{r['device']}" for r in self._results(claim)] if ours else []
            if not now:
                why = "deleted" if kind == "DELETED" else "deallocated or placed elsewhere"
                self._submit(uid, self._give_back, uid, f"the claim was {why} before binding")
            elif now != [f"{d.pool}/{d.device}" for d in rec.devices]:
                self._submit(uid, self._give_back, uid, "the claim was allocated other devices")
            elif self.status.needs(uid):  # after a restart: say it again
                self._submit(uid, self._acquire, _Seen(ns, name, uid, (), ours))
            return
        if not ours:
            with self._guard:
                self._failed_at.pop(uid, None)
            return
        if rec is not None or self._decided(claim, ours):
            return  # prepared already, or our condition (either one) is on the claim
        alloc = _allocation_id(claim)
        with self._guard:
            if self._failed_at.get(uid) == alloc:
                return  # our failure condition is on its way; the scheduler re-places it
        self._submit(uid, self._acquire, _Seen(ns, name, uid, alloc, ours))

    def _results(self, claim: dict[str, Any]) -> list[dict[str, Any]]:
        """The allocation results of our driver (what a record of the claim holds)."""
        alloc = (claim.get("status") or {}).get("allocation") or {}
        results = (alloc.get("devices") or {}).get("results") or []
        return [r for r in results if r.get("driver") == self.driver]

    def _ours(self, claim: dict[str, Any]) -> list[dict[str, Any]]:
        """The allocation results of this pool that wait for our binding condition."""
        return [
            r
            for r in self._results(claim)
            if r.get("pool") == self.pool and self.acquired in (r.get("bindingConditions") or [])
        ]

    def _decided(self, claim: dict[str, Any], ours: list[dict[str, Any]]) -> bool:
        """Whether one of our conditions is True on every device: the scheduler binds the
        pod or places the claim again (it clears the status when it does)."""
        true = {
            (e.get("pool"), e.get("device")): {
                c.get("type") for c in e.get("conditions") or [] if c.get("status") == "True"
            }
            for e in (claim.get("status") or {}).get("devices") or []
            if e.get("driver") == self.driver
        }
        return all(
            true.get((r["pool"], r["device"]), set()) & {self.acquired, self.failed} for r in ours
        )

    def _submit(self, uid: str, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` off the watch thread, one task per claim at a time; an event that came
        meanwhile is decided when it ends (with the outcome in the journal)."""
        with self._guard:
            if uid in self._busy or self._stop.is_set():
                return
            self._busy.add(uid)

        def task() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("claim task failed", extra={"uid": uid})
            finally:
                with self._guard:
                    self._busy.discard(uid)
                    missed = self._missed.pop(uid, None)
                if missed is not None and not self._stop.is_set():
                    self.seen(*missed)

        self._pool.submit(task)

    def _give_back(self, uid: str, why: str) -> None:
        if self.preparer.give_back(uid, why):
            metrics.BINDING.labels("given_back").inc()
            log.info("claim given back before binding", extra={"uid": uid, "reason": why})

    def _acquire(self, c: _Seen) -> None:
        try:
            rec = self.preparer.acquire(c.namespace, c.name, c.uid)
        except PrepareError as err:
            if err.kind in ("busy", "state"):
                return  # the other instance holds it; its outcome comes as an event
            self._fail(c, err)
            return
        if rec is not None and rec.phase is ClaimPhase.ACQUIRED:
            metrics.BINDING.labels("acquired").inc()

    def _fail(self, c: _Seen, err: PrepareError) -> None:
        """Probe the failed backends again (so the slice shows what the vendor just said
        before the scheduler places the claim again), then write the failure condition."""
        reason, fix = _FAILURES.get(err.kind, ("AcquireFailed", "see the driver's log"))
        if self.probe is not None and err.kind.startswith("vendor_"):
            for backend in sorted({_backend_of(str(r["device"])) for r in c.ours}):
                try:
                    self.probe(backend)
                except Exception as failed:  # the failure condition goes out regardless
                    log.warning("reprobe failed", extra={"backend": backend, "error": str(failed)})
            if self.settle is not None:
                self.settle()  # the slice written before the scheduler looks again
        with self._guard:
            self._failed_at[c.uid] = c.alloc
        node = self.preparer.node
        entries = []
        for r in c.ours:
            backend = _backend_of(str(r["device"]))
            message = (
                f"acquire on node {node} failed for backend {backend}: {err}; {fix}. "
                "The claim is placed again"
            )
            entries.append(
                acquire_failed_entry(
                    driver=self.driver,
                    pool=str(r["pool"]),
                    device=str(r["device"]),
                    backend=backend,
                    node=node,
                    reason=reason,
                    message=redact(message),
                )
            )
        self.status.publish(c.namespace, c.name, c.uid, entries)
        metrics.BINDING.labels("failed").inc()
        log.warning(
            "acquire before binding failed; the claim is placed again",
            extra={
                "claim": f"{c.namespace}/{c.name}",
                "uid": c.uid,
                "reason": reason,
                "error": str(err),
            },
        )


@dataclass(frozen=True)
class _Seen:
    """A claim allocated devices of ours that wait for the binding condition."""

    namespace: str
    name: str
    uid: str
    alloc: tuple[str, ...]  # :func:`_allocation_id`
    ours: list[dict[str, Any]]


def _allocation_id(claim: dict[str, Any]) -> tuple[str, ...]:
    """What tells one allocation from the next of the same claim (a re-placement may pick
    the same device again, at a later allocation time)."""
    alloc = (claim.get("status") or {}).get("allocation") or {}
    results = (alloc.get("devices") or {}).get("results") or []
    return (
        str(alloc.get("allocationTimestamp") or ""),
        *sorted(f"{r.get('pool')}/{r.get('device')}" for r in results),
    )


def _backend_of(device: str) -> str:
    try:
        return split_device_id(device)[0]
    except ValueError:
        return device
