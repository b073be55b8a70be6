"""Usage records: what a node agent owes the cluster's accounting after each release.

Both agents call :meth:`UsageReporter.released` once they have given an acquisition back
(the device plugin from its release runner, the DRA driver from unprepare). That writes
a pending entry, synced, into the agent's own ``usage.journal`` next to its state; from
then on the record survives a crash or a restart of the agent. A background thread then,
for each pending entry:

1. reads the vendor's own figures of the session (:mod:`qpu_k8s.node.vendorusage`),
   retried with backoff for ``fetch_window`` seconds, then recorded as ``NotReported``
   with the reason (never as zero);
2. looks up the pod (its controller and ServiceAccount), once, best effort;
3. creates the QuantumUsage object under a deterministic name: a create repeated after a
   crash meets ``AlreadyExists`` and counts as done, so each acquisition has exactly one;
4. counts it in the Prometheus counters (labels: the workload's namespace and the
   backend, never a pod) and emits an Event on the record; marks the entry done.

Done entries are kept ``done_ttl`` seconds as markers (the device plugin sweeps its
released acquisitions at start and skips those already reported), then pruned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, RootModel

from qpu_k8s.core.credentials import redact
from qpu_k8s.core.journal import Journal
from qpu_k8s.core.kubeclient import CoreApi
from qpu_k8s.core.metrics import PREFIX
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.names import API_GROUP, API_VERSION, USAGE_KIND, USAGE_PLURAL
from qpu_k8s.core.usage import (
    Agent,
    Owner,
    ReportState,
    UsageSpec,
    VendorUsage,
    rfc3339,
    usage_object,
)
from qpu_k8s.core.vendors import ResourceType, profile, token_fingerprint
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.node.releases import Backoff
from qpu_k8s.node.vendorusage import UsageFetchError, VendorUsageReader

log = logging.getLogger(__name__)

JOURNAL_NAME = "usage.journal"
API_TIMEOUT = 10.0
_LABELS = ["namespace", "backend"]

RECORDS = Counter(
    PREFIX + "usage_acquisitions_total",
    "QPU acquisitions released and recorded (a QuantumUsage each), by workload namespace "
    "and backend.",
    _LABELS,
)
WALL_SECONDS = Counter(
    PREFIX + "usage_wall_seconds_total",
    "Seconds QPU acquisitions were held (acquire to release), by workload namespace and backend.",
    _LABELS,
)
VENDOR_SECONDS = Counter(
    PREFIX + "usage_vendor_quantum_seconds_total",
    "QPU seconds the vendor reported for the released sessions' jobs, by workload namespace "
    "and backend.",
    _LABELS,
)
VENDOR_JOBS = Counter(
    PREFIX + "usage_vendor_jobs_total",
    "Vendor jobs run in the released sessions, as the vendor counts them.",
    _LABELS,
)
NOT_REPORTED = Counter(
    PREFIX + "usage_vendor_not_reported_total",
    "Released acquisitions for which the vendor reported no usage figures.",
    _LABELS,
)
WRITE_ERRORS = Counter(
    PREFIX + "usage_record_errors_total",
    "Failed attempts to write a QuantumUsage (retried), by kind.",
    ["kind"],
)
PENDING = Gauge(
    PREFIX + "usage_records_pending",
    "Released acquisitions whose QuantumUsage is not written yet (kept in the agent's journal).",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Released(_Model):
    """What the agent knows about an acquisition it has just released."""

    agent: Agent
    acquisition_id: str
    namespace: str
    backend: str
    token: str  # to ask the vendor; recorded only as the type allows (see session_id)
    acquired_at: float
    released_at: float
    reason: str = ""
    pod: str = ""
    claim: str = ""
    claim_uid: str = ""


class Pending(_Model):
    kind: Literal["pending"] = "pending"
    released: Released
    resource_id: str
    resource_type: str
    vendor: VendorUsage | None = None
    pod_looked_up: bool = False
    pod_uid: str = ""
    owner: Owner | None = None
    service_account: str = ""
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""
    done_at: float | None = None


class Consumers(_Model):
    """The pods a DRA claim was reserved for when it was prepared (gone by unprepare)."""

    kind: Literal["consumers"] = "consumers"
    pods: list[str]
    at: float


class Entry(RootModel[Annotated[Pending | Consumers, Field(discriminator="kind")]]):
    """One journal value."""


BackendLookup = Callable[[str], tuple[QuantumBackend, dict[str, str]] | None]


def session_id(resource_type: str, token: str) -> str:
    """The token as the record may show it: as it is where it is a public session id,
    else its fingerprint (the claim status's rule); nothing for session-less types."""
    try:
        vendor = profile(ResourceType(resource_type))
    except ValueError:
        return token_fingerprint(token) if token else ""
    if not vendor.session_based or not token:
        return ""
    return token if vendor.token_is_public_id else token_fingerprint(token)


class UsageReporter:
    """Writes the QuantumUsage records of one agent (see the module docstring)."""

    def __init__(
        self,
        *,
        agent: Agent,
        node: str,
        namespace: str,
        state_dir: Path,
        api: client.ApiClient | None,
        backends: BackendLookup,
        reader: VendorUsageReader | None = None,
        backoff: Backoff | None = None,
        fetch_window: float = 300.0,
        done_ttl: float = 3600.0,
        exclusive: bool = False,
    ) -> None:
        self.agent = agent
        self.node = node
        self.namespace = namespace
        self.core = CoreApi(api) if api is not None else None
        self.backends = backends
        self.reader = reader or VendorUsageReader()
        self.backoff = backoff or Backoff(base=2.0, cap=120.0)
        self.fetch_window = fetch_window
        self.done_ttl = done_ttl
        self.journal: Journal[Entry] = Journal(state_dir / JOURNAL_NAME, Entry, exclusive=exclusive)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The first pass after a start tries every pending record at once (a restart is
        # often what fixed the reason of the last failure).
        self._first_pass = True

    @property
    def enabled(self) -> bool:
        return self.core is not None and bool(self.namespace)

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        self.journal.open()

    def start(self) -> None:
        if not self.enabled:
            log.info("usage records off: no apiserver or no --usage-namespace")
            return
        self._thread = threading.Thread(target=self._loop, name="usage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=API_TIMEOUT + 5)
        self.journal.close()

    # -- what the agents call -----------------------------------------------------------------
    def note_consumers(self, claim_uid: str, pods: list[str]) -> None:
        """DRA: the pods a claim is reserved for at prepare (not synced: a crash before
        the next synced write only loses the pod name of the record)."""
        if not self.enabled:
            return
        with self.journal.transaction(durable=False) as txn:
            txn.put(f"consumers/{claim_uid}", Entry(Consumers(pods=pods, at=time.time())))

    def knows(self, acquisition_id: str) -> bool:
        return self.journal.get(f"usage/{acquisition_id}") is not None

    def released(self, rel: Released) -> None:
        """Record (synced) that ``rel`` was released; its QuantumUsage follows."""
        if not self.enabled:
            return
        found = self.backends(rel.backend)
        rid, rtype = (
            (found[0].spec.resource_id, found[0].spec.type.value)
            if found
            else ("unknown", "unknown")
        )
        key = f"usage/{rel.acquisition_id}"
        with self.journal.transaction() as txn:
            if txn.get(key) is not None:
                return
            if rel.claim_uid and not rel.pod:
                noted = txn.get(f"consumers/{rel.claim_uid}")
                if noted is not None and isinstance(noted.root, Consumers) and noted.root.pods:
                    rel = rel.model_copy(update={"pod": noted.root.pods[0]})
            txn.put(key, Entry(Pending(released=rel, resource_id=rid, resource_type=rtype)))
        self._wake.set()

    def forget_consumers(self, claim_uid: str) -> None:
        with self.journal.transaction(durable=False) as txn:
            txn.delete(f"consumers/{claim_uid}")

    # -- the writer ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.report_due(time.time())
            except Exception:
                log.exception("usage pass failed")
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _pending(self) -> dict[str, Pending]:
        return {
            k: e.root
            for k, e in self.journal.snapshot().items()
            if isinstance(e.root, Pending) and e.root.done_at is None
        }

    def _next_wait(self) -> float:
        due = [p.next_at for p in self._pending().values()]
        return 30.0 if not due else max(0.05, min(30.0, min(due) - time.time()))

    def report_due(self, now: float) -> int:
        """One pass: write every due record; returns how many were written."""
        pending = self._pending()
        PENDING.set(len(pending))
        written = 0
        for key, entry in pending.items():
            if self._stop.is_set():
                break
            if (entry.next_at <= now or self._first_pass) and self._report(key, entry):
                written += 1
        self._first_pass = False
        self._prune(now)
        return written

    def _save(self, key: str, entry: Pending, *, durable: bool = False) -> None:
        with self.journal.transaction(durable=durable) as txn:
            txn.put(key, Entry(entry))

    def _retry(self, key: str, entry: Pending, error: str) -> None:
        attempts = entry.attempts + 1
        delay = self.backoff.delay(attempts)
        self._save(
            key,
            entry.model_copy(
                update={
                    "attempts": attempts,
                    "last_error": error,
                    "next_at": time.time() + delay,
                }
            ),
        )
        log.warning(
            "usage record not written yet; will retry",
            extra={"acquisition": entry.released.acquisition_id, "error": error, "retry_in": delay},
        )

    def _report(self, key: str, entry: Pending) -> bool:
        rel = entry.released
        if entry.vendor is None:
            try:
                vendor = self._vendor(entry)
            except UsageFetchError as err:
                if time.time() - rel.released_at < self.fetch_window:
                    self._retry(key, entry, f"vendor usage: {err}")
                    return False
                vendor = VendorUsage.not_reported(
                    f"the vendor's API could not be read within {self.fetch_window:.0f} s "
                    f"of the release: {err}"
                )
            entry = entry.model_copy(update={"vendor": vendor, "attempts": 0})
            self._save(key, entry)
        if not entry.pod_looked_up:
            entry = self._look_up_pod(entry)
            self._save(key, entry)
        spec = self._spec(entry)
        try:
            created = self._create(spec)
        except ApiException as err:
            kind = "invalid" if err.status in (400, 422) else f"http_{err.status}"
            WRITE_ERRORS.labels(kind).inc()
            self._retry(key, entry, f"{kind}: {redact(str(err.body or err.reason))[:500]}")
            return False
        except Exception as err:
            WRITE_ERRORS.labels("unreachable").inc()
            self._retry(key, entry, redact(str(err)) or type(err).__name__)
            return False
        if created is not None:
            self._count(spec)
            self._event(created, spec)
        self._save(key, entry.model_copy(update={"done_at": time.time()}), durable=True)
        return created is not None

    def _vendor(self, entry: Pending) -> VendorUsage:
        rel = entry.released
        if not session_id(entry.resource_type, rel.token):
            return VendorUsage.not_reported(
                f"type {entry.resource_type} holds no vendor session to report usage for"
            )
        found = self.backends(rel.backend)
        if found is None:
            raise UsageFetchError(f"backend {rel.backend!r} is not configured on this node")
        backend, creds = found
        try:
            return self.reader.read(backend, creds, rel.token)
        except UsageFetchError:
            raise
        except Exception as err:
            raise UsageFetchError(redact(str(err)) or type(err).__name__) from None

    def _look_up_pod(self, entry: Pending) -> Pending:
        rel = entry.released
        update: dict[str, Any] = {"pod_looked_up": True}
        if rel.pod and self.core is not None:
            try:
                pod = self.core.get(
                    f"/api/v1/namespaces/{rel.namespace}/pods/{rel.pod}", timeout=API_TIMEOUT
                )
            except Exception as err:
                # The pod may be gone: its namespace, name and claim still say whose it was.
                log.info("pod not found for a usage record", extra={"pod": rel.pod, "error": err})
                return entry.model_copy(update=update)
            meta = pod.get("metadata") or {}
            update["pod_uid"] = str(meta.get("uid") or "")
            update["service_account"] = str((pod.get("spec") or {}).get("serviceAccountName") or "")
            for ref in meta.get("ownerReferences") or []:
                if ref.get("controller") and ref.get("kind") and ref.get("name"):
                    update["owner"] = Owner(kind=str(ref["kind"]), name=str(ref["name"]))
        return entry.model_copy(update=update)

    def _spec(self, entry: Pending) -> UsageSpec:
        rel = entry.released
        return UsageSpec(
            namespace=rel.namespace,
            pod=rel.pod,
            pod_uid=entry.pod_uid,
            owner=entry.owner,
            service_account=entry.service_account,
            claim=rel.claim,
            claim_uid=rel.claim_uid,
            agent=rel.agent,
            node=self.node,
            backend=rel.backend,
            resource_id=entry.resource_id,
            resource_type=entry.resource_type,
            acquisition_id=rel.acquisition_id,
            session_id=session_id(entry.resource_type, rel.token),
            acquired_at=rfc3339(rel.acquired_at),
            released_at=rfc3339(rel.released_at),
            wall_seconds=round(max(0.0, rel.released_at - rel.acquired_at), 3),
            release_reason=rel.reason[:1024],
            vendor=entry.vendor or VendorUsage.not_reported("not read"),
        )

    def _create(self, spec: UsageSpec) -> dict[str, Any] | None:
        """The created object, or None when it exists already (an earlier attempt)."""
        assert self.core is not None
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.namespace}/{USAGE_PLURAL}"
        try:
            return self.core.create(path, usage_object(spec, self.namespace), timeout=API_TIMEOUT)
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    @staticmethod
    def _count(spec: UsageSpec) -> None:
        labels = (spec.namespace, spec.backend)
        RECORDS.labels(*labels).inc()
        WALL_SECONDS.labels(*labels).inc(spec.wall_seconds)
        v = spec.vendor
        if v.state is ReportState.NOT_REPORTED:
            NOT_REPORTED.labels(*labels).inc()
            return
        if v.quantum_seconds is not None:
            VENDOR_SECONDS.labels(*labels).inc(v.quantum_seconds)
        if v.job_count is not None:
            VENDOR_JOBS.labels(*labels).inc(v.job_count)

    def _event(self, created: dict[str, Any], spec: UsageSpec) -> None:
        assert self.core is not None
        meta = created.get("metadata") or {}
        who = spec.owner.kind + "/" + spec.owner.name if spec.owner else spec.pod or spec.claim
        v = spec.vendor
        vendor = (
            f"vendor: {v.quantum_seconds if v.quantum_seconds is not None else '?'} QPU s in "
            f"{v.job_count} job(s)"
            if v.state is ReportState.REPORTED
            else "vendor: not reported"
        )
        now = rfc3339(time.time())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": USAGE_KIND,
                "name": meta.get("name"),
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },
            "type": "Normal",
            "reason": "QPUUsageRecorded",
            "message": f"{spec.namespace}/{who} held {spec.backend} for {spec.wall_seconds:.1f} s; "
            f"{vendor}",
            "source": {"component": f"qpu-k8s-{spec.agent.value}", "host": self.node},
            "reportingComponent": f"qpu-k8s-{spec.agent.value}",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create(
                f"/api/v1/namespaces/{self.namespace}/events", body, timeout=API_TIMEOUT
            )
        except Exception as err:
            log.warning("usage Event not written", extra={"error": redact(str(err))[:300]})

    def _prune(self, now: float) -> None:
        old = [
            k
            for k, e in self.journal.snapshot().items()
            if (
                isinstance(e.root, Pending)
                and e.root.done_at
                and now - e.root.done_at > self.done_ttl
            )
            or (isinstance(e.root, Consumers) and now - e.root.at > 30 * 86400)
        ]
        if old:
            with self.journal.transaction(durable=False) as txn:
                for k in old:
                    txn.delete(k)


def registry_lookup(registry: BackendRegistry) -> BackendLookup:
    """The backends an agent's registry knows, with their resolved credentials."""

    def lookup(name: str) -> tuple[QuantumBackend, dict[str, str]] | None:
        state = registry.get(name)
        return (state.backend, registry.credentials_for(name)) if state is not None else None

    return lookup
