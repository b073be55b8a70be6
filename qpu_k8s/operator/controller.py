"""The operator's state and the reconcile of one backend: probe, status, events, slices.

Kopf tells the controller what exists (create/update/resume/delete, namespace and claim
events); the controller keeps an entry per backend and runs two tasks it owns:

* the probe schedule (:mod:`.scheduler`): each backend is probed when due, its status
  written and Events posted on condition changes, its cluster-wide slices published;
* the cluster sync (:mod:`.sync`): the node agents' ConfigMap and the shared ResourceClaims,
  derived from a fresh listing.

What must survive a restart lives in the object: ``status`` (conditions with their
transition times, last probe time) seeds the in-memory entry on resume. Nothing here
imports kopf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from qpu_k8s.core.budget import BUDGET_NAME
from qpu_k8s.core.credentials import redact
from qpu_k8s.core.metrics import serve_metrics
from qpu_k8s.core.model import AccessMode, InvalidBackendError
from qpu_k8s.core.model import QuantumBackend as Backend
from qpu_k8s.core.names import API_GROUP, API_VERSION, DRIVER_NAME, KIND
from qpu_k8s.core.qrmi_client import CallTimeouts, ClientFactory, qrmi_client_factory
from qpu_k8s.core.timestamps import parse_rfc3339, rfc3339
from qpu_k8s.core.usage import NAMESPACE_LABEL as USAGE_NAMESPACE_LABEL
from qpu_k8s.operator import configmap
from qpu_k8s.operator import metrics as m
from qpu_k8s.operator import shared_claims as sc
from qpu_k8s.operator.admissioncheck import FIELD_MANAGER, AdmissionGate, Write
from qpu_k8s.operator.budgets import BudgetKeeper
from qpu_k8s.operator.conditions import EventSpec, transitions
from qpu_k8s.operator.kube import ApiStatusError, Kube
from qpu_k8s.operator.probe import ClientCache, run_probe
from qpu_k8s.operator.reconcile import (
    Observation,
    SecretProblem,
    compute_status,
    is_ready,
)
from qpu_k8s.operator.scheduler import ProbeScheduler, clock
from qpu_k8s.operator.secrets import SecretReader
from qpu_k8s.operator.status import BackendStatus, ConditionType
from qpu_k8s.operator.sync import SyncLoop

log = logging.getLogger(__name__)
# The apiserver only accepts Events about cluster-scoped objects in "default" (or no
# namespace); kubectl describe finds them there.
EVENT_NAMESPACE = "default"


class RetryLater(Exception):
    """A step cannot finish yet; the caller (a kopf handler) retries after ``delay``."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        self.delay = delay
        super().__init__(message)


class SharedSlices(Protocol):
    """Cluster-wide ResourceSlices of shared backends (implemented in operator/slices.py)."""

    async def publish(self, backend: Backend, status: BackendStatus, uid: str = "") -> bool: ...
    async def remove(self, name: str) -> None: ...


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the controller needs that is not an API client (flags of ``qpu-k8s operator``)."""

    namespace: str = "qpu-system"
    node_config_map: str = "qpu-k8s-node-config"
    driver: str = DRIVER_NAME
    probe_timeout: float = 10.0
    probe_concurrency: int = 16
    debounce: float = 0.3
    resync: float = 300.0
    deletion_grace: float = 120.0
    secret_ttl: float = 20.0
    # A missing or incomplete Secret is retried this soon (admins create it after reading
    # the condition), not only after the probe interval.
    secret_retry: float = 30.0
    dra: bool = False
    # Seconds between target() calls (calibration data); health is probed every interval.
    target_refresh: float = 300.0
    # Minimum seconds between status writes that would only move lastProbeTime (0: every probe).
    status_refresh: float = 0.0
    metrics_address: str = ""
    # Only QuantumBackends matching this label selector ("k=v,k2"): sharding, tests, dev copies.
    backend_selector: str = ""
    # Slices of a shared backend that is not Ready: "withdraw" its devices or "taint" them.
    unhealthy: str = "withdraw"
    # Devices of a shared backend: "lanes" (one per lane) or "capacity" (one per QPU).
    device_model: str = "lanes"
    # Serve Kueue's AdmissionCheck quantum.example.com/backend-online (admissioncheck.py).
    kueue_admission_check: bool = False
    # Keep QuantumBudgets' status from the usage records (budgets.py).
    budgets: bool = False


@dataclass
class Entry:
    """One backend as the controller knows it."""

    name: str
    uid: str = ""
    generation: int | None = None
    backend: Backend | None = None
    problems: tuple[tuple[str, str], ...] = ()
    status: BackendStatus = field(default_factory=BackendStatus)
    due: float = 0.0
    deleting: bool = False
    written: dict[str, Any] | None = None
    # When target() last answered (clock()); None: not in this process yet.
    target_at: float | None = None
    last_write: float = 0.0
    publish_problems: tuple[str, ...] = ()


_VOLATILE = ("lastProbeTime", "probeLatencyMs", "pendingJobs")


def _stable(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in _VOLATILE}


class Controller:
    """See the module docstring. One instance per operator process."""

    def __init__(
        self,
        cfg: OperatorConfig,
        kube: Kube,
        *,
        client_factory: ClientFactory | None = None,
        slices: SharedSlices | None = None,
    ) -> None:
        self.cfg = cfg
        self.kube = kube
        self.slices = slices
        self.entries: dict[str, Entry] = {}
        self.secrets = SecretReader(kube.secret_data, cfg.namespace, cfg.secret_ttl)
        self.clients = ClientCache(
            client_factory or qrmi_client_factory(CallTimeouts(probe=cfg.probe_timeout))
        )
        self.counts: dict[str, sc.Counts] = {}
        self.ns_requests: dict[str, frozenset[str]] = {}
        self._released: set[str] = set()
        self.scheduler = ProbeScheduler(self._probe, cfg.probe_concurrency)
        self.sync = SyncLoop(self.sync_once, debounce=cfg.debounce, resync=cfg.resync)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._metrics_server: Any = None
        self._instance = os.environ.get("HOSTNAME", "local")
        self.budgets = (
            BudgetKeeper(self._list_usage, self._write_budget, on_change=self._budget_changed)
            if cfg.budgets
            else None
        )
        self.gate = (
            AdmissionGate(self.readiness, self._budget_spent) if cfg.kueue_admission_check else None
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self.cfg.metrics_address and self._metrics_server is None:
            self._metrics_server = serve_metrics(self.cfg.metrics_address)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.scheduler.run(), name="qpu-probe-scheduler"),
            loop.create_task(self.sync.run(), name="qpu-sync"),
        ]
        if self.budgets is not None:
            self._tasks.append(loop.create_task(self.budgets.run(), name="qpu-budgets"))
        self.request_sync()
        log.info("operator started", extra={"namespace": self.cfg.namespace, "dra": self.cfg.dra})

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept referenced until it ends (bounded by stop)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self._background:  # Events still being posted: a moment to finish
            await asyncio.wait(self._background, timeout=5.0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def health(self) -> dict[str, Any]:
        """For the liveness endpoint: raises when a loop died (the pod then gets restarted)."""
        for t in self._tasks:
            if t.done():
                raise RuntimeError(f"operator loop {t.get_name()} stopped")
        return {
            "backends": len(self.entries),
            "probing": self.scheduler.in_flight,
            "syncs": self.sync.passes,
            "lastSyncError": self.sync.last_error,
        }

    # -- what kopf tells us ---------------------------------------------------------------
    def observe(self, body: Mapping[str, Any]) -> Entry:
        """A watch event of a QuantumBackend: (re)validate and schedule it if it is new to
        us or changed.

        What happened is read from the object: a backend not known yet was created (no
        status) or is seen again at start-up (``resume``: a status written before); a new
        generation or uid is an ``update``; anything else (the operator's own status
        writes) changes nothing.
        """
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        e = self.entries.get(name)
        if e is None:
            trigger = "resume" if body.get("status") else "create"
        elif meta.get("generation") != e.generation or str(meta.get("uid", "")) != e.uid:
            trigger = "update"
        else:
            return e
        if e is None:
            e = Entry(name=name, status=BackendStatus.from_api(body.get("status")))
            self.entries[name] = e
            m.BACKENDS.set(len(self.entries))
            self._backends_changed()
        e.uid = str(meta.get("uid", ""))
        e.deleting = bool(meta.get("deletionTimestamp"))
        generation = meta.get("generation")
        if generation != e.generation:
            e.target_at = None  # a changed spec is calibrated anew at its first probe
        try:
            e.backend, e.problems = Backend.from_object(body), ()
        except InvalidBackendError as err:
            e.backend, e.problems = None, tuple(err.problems)
        fresh = trigger != "resume" or e.status.observed_generation != generation
        e.generation = generation if isinstance(generation, int) else None
        self._schedule(e, clock() if fresh else self._resume_due(e))
        m.RECONCILES.labels(trigger, "ok").inc()
        self.request_sync()
        return e

    def namespace_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        wanted = (
            frozenset() if event_type == "DELETED" else frozenset(sc.requested(meta.get("labels")))
        )
        old = self.ns_requests.get(name, frozenset())
        if event_type == "DELETED":
            self.ns_requests.pop(name, None)
        else:
            self.ns_requests[name] = wanted
        if old != wanted:
            self.request_sync()

    def claims_changed(self) -> None:
        self.request_sync()

    async def finalize(self, body: Mapping[str, Any], runtime: float) -> None:
        """Deletion, in order: slices, shared claims (waiting for them), node config.

        Slices go first so the scheduler allocates nothing new; claims next, so their nodes
        unprepare and release the QRMI acquisitions; the node config last, because the node
        agents need the backend's config to make those releases. Waiting is bounded by
        ``deletion_grace``; API errors raise and are retried by the caller.
        """
        name = str((body.get("metadata") or {}).get("name"))
        e = self.entries.get(name)
        if e is not None:
            e.deleting = True
        if self.cfg.dra:
            if self.slices is not None:
                await self.slices.remove(name)
            selector = f"{sc.SELECTOR},{sc.BACKEND_LABEL}={name}"
            for c in await self.kube.list_claims(selector):
                meta = c.get("metadata") or {}
                if not meta.get("deletionTimestamp"):
                    await self.kube.delete_claim(meta["namespace"], meta["name"])
            left = await self.kube.list_claims(selector)
            if left and runtime < self.cfg.deletion_grace:
                raise RetryLater(
                    f"waiting for {len(left)} shared claim(s) of {name} to be released", 2.0
                )
            if left:
                log.warning(
                    "gave up waiting for shared claims; removing the backend anyway",
                    extra={"backend": name, "claims": len(left)},
                )
        self._released.add(name)
        ticket = self.request_sync()
        if not await self.sync.wait(ticket, within=30.0):
            raise RetryLater(f"node config not updated yet: {self.sync.last_error}", 5.0)
        self.entries.pop(name, None)
        self.scheduler.forget(name)
        self.clients.drop(name)
        self.counts.pop(name, None)
        m.forget_backend(name)
        m.BACKENDS.set(len(self.entries))
        self._backends_changed()
        m.RECONCILES.labels("delete", "ok").inc()
        log.info("backend removed", extra={"backend": name})

    # -- budgets ------------------------------------------------------------------------------
    def budget_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        if self.budgets is not None:
            self.budgets.budget_event(body, event_type)

    def usage_event(self, body: Mapping[str, Any]) -> None:
        """A usage record was written (only those in our namespace count)."""
        if self.budgets is not None and (body.get("metadata") or {}).get("namespace") == (
            self.cfg.namespace
        ):
            self.budgets.usage_event(body)

    async def _list_usage(self, ns: str) -> list[dict[str, Any]]:
        return await self.kube.list_usage(self.cfg.namespace, f"{USAGE_NAMESPACE_LABEL}={ns}")

    async def _write_budget(self, ns: str, status: dict[str, Any]) -> None:
        await self.kube.patch_budget_status(ns, BUDGET_NAME, status)

    def _budget_spent(self, ns: str) -> str | None:
        return self.budgets.spent(ns) if self.budgets is not None else None

    def _budget_changed(self, ns: str) -> None:
        self._backends_changed()  # queued Workloads of the namespace are decided again

    # -- Kueue's AdmissionCheck ---------------------------------------------------------------
    def readiness(self, name: str) -> tuple[bool, str] | None:
        """(Ready, why not) of a backend as last probed; None when there is no such backend."""
        e = self.entries.get(name)
        if e is None or e.deleting:
            return None
        if is_ready(e.status):
            return True, ""
        ready = e.status.condition(ConditionType.READY)
        if ready is None:
            return False, "not probed yet"
        return False, f"{ready.reason}: {ready.message}" if ready.message else ready.reason

    def kueue_event(self, kind: str, body: Mapping[str, Any], event_type: str | None) -> None:
        """A Workload, AdmissionCheck or ResourceFlavor changed: write what that decides."""
        if self.gate is None:
            return
        handler = {
            "workload": self.gate.workload_event,
            "admissioncheck": self.gate.check_event,
            "resourceflavor": self.gate.flavor_event,
        }[kind]
        self._write_kueue(handler(body, event_type))

    def _backends_changed(self) -> None:
        if self.gate is not None:
            self._write_kueue(self.gate.reevaluate())

    def _write_kueue(self, writes: list[Write]) -> None:
        for w in writes:
            self._spawn(self._apply_kueue(w))

    async def _apply_kueue(self, w: Write) -> None:
        plural = {"workload": "workloads", "admissioncheck": "admissionchecks"}[w.kind]
        try:
            await self.kube.apply_kueue_status(plural, w.namespace, w.name, w.body, FIELD_MANAGER)
        except ApiStatusError as err:
            # The next event on the object (or a backend change) decides it again.
            m.API_ERRORS.labels("kueue").inc()
            log.warning(
                "admission check not written",
                extra={"object": f"{w.kind} {w.namespace}/{w.name}", "error": str(err)},
            )
            return
        if w.kind == "workload":
            check = w.body["status"]["admissionChecks"][0]
            m.ADMISSION_CHECKS.labels(check["state"]).inc()
            log.info(
                "admission check decided",
                extra={
                    "workload": f"{w.namespace}/{w.name}",
                    "state": check["state"],
                    "detail": check["message"],
                },
            )

    # -- probes -------------------------------------------------------------------------------
    def _resume_due(self, e: Entry) -> float:
        """After a restart, keep the probe rhythm stored in status instead of probing all now."""
        now = clock()
        if e.backend is None or not e.status.last_probe_time:
            return now
        try:
            last = parse_rfc3339(e.status.last_probe_time)
        except ValueError:
            return now
        age = (datetime.now(UTC) - last).total_seconds()
        return now + max(0.0, e.backend.spec.probe_interval_seconds - age)

    def _schedule(self, e: Entry, due: float) -> None:
        e.due = due
        self.scheduler.schedule(e.name, due)

    async def _probe(self, name: str) -> None:
        """Probe one backend, write what it showed, and schedule its next probe."""
        e = self.entries.get(name)
        if e is None or e.deleting:
            return
        generation = e.generation
        started = clock()  # the next probe is due one interval after this one started
        try:
            await self._apply(e, await self._observe(e))
            m.RECONCILES.labels("probe", "ok").inc()
        except Exception:
            m.RECONCILES.labels("probe", "error").inc()
            log.exception("probe failed", extra={"backend": e.name})
        finally:
            if not e.deleting and self.entries.get(e.name) is e:
                if e.generation != generation:
                    self._schedule(e, clock())
                elif e.backend is not None:
                    interval = float(e.backend.spec.probe_interval_seconds)
                    if e.status.state == "no-credentials":
                        interval = min(interval, self.cfg.secret_retry)
                    self._schedule(e, max(started + interval, clock()))

    async def _observe(self, e: Entry) -> Observation:
        c = self.counts.get(e.name, sc.Counts())
        base: dict[str, Any] = {
            "generation": e.generation,
            "now": datetime.now(UTC),
            "backend": e.backend,
            "live_acquisitions": c.live_acquisitions,
            "shared_claims": c.shared_claims,
            "publish_problems": e.publish_problems,
        }
        if e.backend is None:
            return Observation(**base, spec_problems=e.problems)
        try:
            creds = await self.secrets.credentials(e.backend)
        except SecretProblem as problem:
            return Observation(**base, secret_problem=problem)
        client = self.clients.get(e.backend, creds)
        now = clock()
        due = (
            not e.status.last_target_time
            or e.target_at is None
            or now - e.target_at >= self.cfg.target_refresh
        )
        probe = await run_probe(client, with_target=due)
        if probe.target is not None:
            e.target_at = now
        rtype = e.backend.spec.type.value
        m.PROBE_SECONDS.labels(rtype).observe(probe.seconds)
        m.PROBES.labels(rtype, probe.health.status).inc()
        # The raw target() (IBM: configuration + calibration, ~1 MB as Python objects) is
        # not kept: status holds the attributes derived from it.
        return Observation(**base, probe=probe)

    async def _apply(self, e: Entry, obs: Observation) -> None:
        status = compute_status(obs, e.status)
        events = transitions(e.status.conditions, status.conditions)
        before = self.readiness(e.name)
        e.status = status
        if self.readiness(e.name) != before:
            self._backends_changed()
        await self._write_status(e)
        for ev in events:
            # Off the probe's path: an Event is a record of the change, the status is it.
            self._spawn(self._post_event(e, ev))
        m.BACKEND_READY.labels(e.name).set(1 if is_ready(status) else 0)
        await self._publish_slice(e)

    async def _publish_slice(self, e: Entry) -> None:
        if self.slices is None or e.backend is None or e.deleting:
            return
        if e.backend.spec.access is not AccessMode.SHARED:
            return
        problems: tuple[str, ...] = ()
        try:
            if await self.slices.publish(e.backend, e.status, e.uid):
                m.SLICE_WRITES.inc()
        except ApiStatusError as err:
            m.API_ERRORS.labels("slice").inc()
            problems = (f"ResourceSlice not published: {err}",)
        except Exception as err:  # a bug in the publisher must not stop the probe loop
            log.exception("slice publishing failed", extra={"backend": e.name})
            problems = (f"ResourceSlice not published: {type(err).__name__}",)
        if problems != e.publish_problems:
            e.publish_problems = problems
            self._schedule(e, clock())  # re-reconcile so Degraded shows it

    async def _write_status(self, e: Entry, force: bool = False) -> None:
        body = e.status.to_api()
        if body == e.written:
            return
        now = clock()
        if (
            not force
            and e.written is not None
            and self.cfg.status_refresh > 0
            and _stable(body) == _stable(e.written)
            and now - e.last_write < self.cfg.status_refresh
        ):
            return
        try:
            await self.kube.patch_backend_status(e.name, body)
        except ApiStatusError as err:
            if err.status != 404:
                m.API_ERRORS.labels("status").inc()
                log.warning("status write failed", extra={"backend": e.name, "error": str(err)})
            return
        e.written, e.last_write = body, now
        m.STATUS_WRITES.inc()

    async def _post_event(self, e: Entry, ev: EventSpec) -> None:
        now = rfc3339(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{e.name}.", "namespace": EVENT_NAMESPACE},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": e.name,
                "uid": e.uid,
            },
            "reason": ev.reason,
            "message": redact(ev.message),
            "type": ev.type,
            "source": {"component": "qpu-k8s-operator"},
            "reportingComponent": "qpu-k8s-operator",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create_event(EVENT_NAMESPACE, body)
            m.EVENTS.labels(ev.type).inc()
        except ApiStatusError as err:
            m.API_ERRORS.labels("event").inc()
            log.warning("event not posted", extra={"backend": e.name, "error": str(err)})
        log.info(
            "condition changed",
            extra={"backend": e.name, "reason": ev.reason, "event": ev.type, "detail": ev.message},
        )

    # -- cluster sync: node config + shared claims ----------------------------------------
    def request_sync(self) -> int:
        return self.sync.request()

    async def sync_once(self) -> None:
        objs = await self.kube.list_backends(self.cfg.backend_selector)
        listed = {str((o.get("metadata") or {}).get("name")) for o in objs}
        self._released &= listed
        selection = configmap.select(objs, self._released)
        await self._write_config_map(selection)
        if self.cfg.dra:
            live = {
                b.name
                for b, o in zip(selection.backends, _valid_objects(objs, selection), strict=True)
                if not (o.get("metadata") or {}).get("deletionTimestamp")
            }
            await self._sync_claims(live)

    async def _write_config_map(self, selection: configmap.Selection) -> None:
        try:
            body = configmap.render(
                self.cfg.node_config_map, self.cfg.namespace, selection.backends
            )
        except configmap.ConfigTooLargeError as err:
            log.error("node config not written", extra={"error": str(err)})
            return
        current = await self.kube.read_config_map(self.cfg.namespace, self.cfg.node_config_map)
        m.CONFIGMAP_BYTES.set(len(body["data"][configmap.DATA_KEY]))
        if configmap.same_content(current, body):
            return
        await self.kube.write_config_map(body, exists=current is not None)
        m.CONFIGMAP_WRITES.inc()
        log.info(
            "node config written",
            extra={"backends": len(selection.backends), "configmap": self.cfg.node_config_map},
        )

    async def _sync_claims(self, live: set[str]) -> None:
        namespaces = await self.kube.list_namespaces()
        claims = await self.kube.list_claims(sc.SELECTOR)
        todo = sc.plan(namespaces, live, claims, self.cfg.driver)
        gone = set(todo.delete)
        for ns, name in todo.delete:
            await self.kube.delete_claim(ns, name)
            log.info("shared claim deleted", extra={"namespace": ns, "claim": name})
        kept = [
            c
            for c in claims
            if ((c.get("metadata") or {}).get("namespace"), (c.get("metadata") or {}).get("name"))
            not in gone
        ]
        for ns, backend in todo.create:
            body = sc.claim_body(backend, ns, self.cfg.driver)
            try:
                await self.kube.create_claim(body)
            except ApiStatusError as err:
                if err.status != 409:
                    raise
                log.warning(
                    "a ResourceClaim with the shared claim's name exists and is not ours",
                    extra={"namespace": ns, "claim": body["metadata"]["name"]},
                )
                continue
            kept.append(body)
            log.info("shared claim created", extra={"namespace": ns, "backend": backend})
        for ns, name in todo.held:
            log.warning(
                "shared claim outdated but in use; replaced once released",
                extra={"namespace": ns, "claim": name},
            )
        counts = sc.count(kept)
        m.SHARED_CLAIMS.set(sum(c.shared_claims for c in counts.values()))
        changed = {n for n in set(counts) | set(self.counts) if counts.get(n) != self.counts.get(n)}
        self.counts = counts
        for name in changed:
            e = self.entries.get(name)
            if e is None or e.deleting:
                continue
            c = counts.get(name, sc.Counts())
            e.status = e.status.model_copy(
                update={"live_acquisitions": c.live_acquisitions, "shared_claims": c.shared_claims}
            )
            await self._write_status(e, force=True)


def _valid_objects(
    objs: list[dict[str, Any]], selection: configmap.Selection
) -> list[dict[str, Any]]:
    """The listed objects matching ``selection.backends`` (same order: sorted by name)."""
    by_name = {str((o.get("metadata") or {}).get("name")): o for o in objs}
    return [by_name[b.name] for b in selection.backends]
