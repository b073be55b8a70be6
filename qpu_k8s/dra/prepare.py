"""NodePrepareResources / NodeUnprepareResources: acquire and release QPUs for a claim.

Prepare reads the claim from the apiserver, takes the allocation results of our driver,
acquires each device through the QRMI adapter, renders the env contract into a CDI spec and
returns the CDI device IDs. Unprepare releases and removes the spec.

Idempotent and crash-safe through the state store (:mod:`.state`):

* a claim is acquired once: a repeated prepare (the kubelet retrying, a second pod sharing
  the claim, a plugin restart) answers from the store with the same CDI ID; kubelet
  semantics are one prepare per claim per node, and one unprepare once its last pod is gone;
* the record is written *before* the first acquire (phase ``preparing``) and each token as
  the vendor returns it, so a crash mid-prepare leaves the tokens to release; the one
  token a crash can lose is that of an acquire the vendor answered just before the crash,
  ahead of its write (acquires run one at a time, so it is the first device without a
  token): reported as lost with the time after which the vendor frees it;
* a failed prepare, a half-done one found later and the claims of a previous boot give
  their sessions back as *owed releases*: recorded durably, tried at once, and retried
  with backoff by the shared release runner until the vendor confirms (they survive
  restarts), never given up after one failure;
* unprepare first marks the claim ``unpreparing`` and removes its CDI spec (no spec may
  ever hand a pod a released token), then releases; a release that fails for a transient
  reason (timeout, vendor unavailable) fails the call so the kubelet retries it; a
  permanent one (rejected credentials, unknown session, backend removed) is logged and the
  acquisition is left to expire at the vendor (its session max TTL);
* CDI specs are written and removed under the store's lock, with a fresh view of the
  claim, so a second driver instance (rolling update) never revives a spec the first one
  is removing, nor removes one it just wrote.

After a prepare, the claim's ``status.devices`` says what each device holds
(:mod:`.claimstatus`), written in the background: a failed status write never fails the
prepare.

Per-claim parameters (:mod:`.params`) may set the IBM session mode and max TTL, and name a
Secret in the claim's namespace whose credentials replace the backend's (the paper's
per-user credentials); such a device gets its own QRMI client, cached per claim.

A QPU device with consumable capacity (``--device-model capacity``) is allocated to many
claims at once, each with its own ``shareID`` and ``consumedCapacity``: each claim is still
prepared on its own (its own session), answered with its share. A claim holding all the
device's lanes is exclusive and opens the vendor's exclusive session mode (IBM
``dedicated``), one holding fewer its shared mode (IBM ``batch``), unless the claim's
parameters name a mode.

A device allocated with ``adminAccess: true`` (a monitoring or calibration pod in a
namespace labelled ``resource.kubernetes.io/admin-access: "true"``) is not acquired: the
scheduler does not count it against the device's availability, so it must hold no lane.
Its container gets the read-only admin environment
(:func:`qpu_k8s.core.envcontract.render_admin`: metadata and status, no token, no
credential) and its claim status says so (:func:`.claimstatus.admin_device_status`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from qpu_k8s.core import errors
from qpu_k8s.core.credentials import StaticCredentials, resolve_credentials
from qpu_k8s.core.envcontract import AdminView, EnvContractError, Grant, render, render_admin
from qpu_k8s.core.faultpoints import crash_point
from qpu_k8s.core.model import AccessMode, QuantumBackend, SecretRef, split_device_id
from qpu_k8s.core.qrmi_client import ClientFactory, QuantumResourceClient
from qpu_k8s.core.timestamps import rfc3339
from qpu_k8s.core.vendors import profile
from qpu_k8s.dra.usage import UsageSink
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.node.releases import Debt, ReleaseRunner
from qpu_k8s.resourceslices.build import shared_pool_name
from qpu_k8s.resourceslices.policy import CAPACITY_LANES

from . import metrics
from .cdi import CdiWriter
from .claims import ClaimNotFoundError, ClaimSource
from .claimstatus import (
    ClaimStatusPublisher,
    acquired_condition,
    admin_device_status,
    device_status,
)
from .params import Effective, InvalidParametersError, effective_parameters
from .state import (
    ClaimPhase,
    ClaimRecord,
    DeviceRecord,
    OwedRelease,
    Record,
    StateStore,
    claim_of,
)

log = logging.getLogger(__name__)


class PrepareError(Exception):
    """A claim could not be prepared/unprepared; ``kind`` is a metrics label."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    cdi_device_id: str
    share_id: str = ""


_TRANSIENT = (errors.QpuTimeoutError, errors.QpuUnavailableError)


class Preparer:
    """Prepare/unprepare logic, independent of gRPC (the servicer only translates)."""

    def __init__(
        self,
        *,
        driver: str,
        pool: str,
        registry: BackendRegistry,
        claims: ClaimSource,
        cdi: CdiWriter,
        store: StateStore,
        client_factory: ClientFactory | None = None,
        status: ClaimStatusPublisher | None = None,
        node: str = "",
    ) -> None:
        self.driver = driver
        self.status = status
        self.node = node or pool
        self.pool = pool
        self.registry = registry
        self.claims = claims
        self.cdi = cdi
        self.store = store
        self.client_factory = client_factory or registry.client_factory
        self.releases = ReleaseRunner(store, self.client_for, metrics.RELEASES)
        # Told of every consumer at prepare and every device released at unprepare.
        self.usage: UsageSink | None = None
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._clients: dict[tuple[str, str], tuple[QuantumResourceClient, QuantumBackend]] = {}
        self._creds: dict[tuple[str, str], dict[str, str]] = {}
        # Pending jobs of the backend as last probed before each acquire, (uid, device) ->
        # count, until the claim's status is built (not journaled: lost on restart).
        self._queue_seen: dict[tuple[str, str], int | None] = {}

    # -- public API -----------------------------------------------------------------------
    def prepare(self, namespace: str, name: str, uid: str) -> list[PreparedDevice]:
        with self._lock_for(uid):
            done = self._existing(uid)
            if done is not None:
                return done
            rec = self._plan(namespace, name, uid)
            if not rec.devices:
                return []
            if not self._take(rec):
                done = self._existing(uid)
                if done is not None:
                    return done
                raise PrepareError(f"ResourceClaim {namespace}/{name} changed; retry", "busy")
            try:
                self._acquire_all(rec)
                self._finish(rec)
            except Exception:
                self._abandon(rec, "the prepare failed", lost=False)
                raise
            log.info(
                "claim prepared",
                extra={
                    "claim": f"{namespace}/{name}",
                    "uid": uid,
                    "devices": ",".join(d.device for d in rec.devices),
                },
            )
            self._publish_status(rec)
            return self._result(rec)

    def acquire(self, namespace: str, name: str, uid: str) -> ClaimRecord | None:
        """Acquire a claim's devices before its pod is bound (:mod:`.binding`): the same plan
        and acquire as :meth:`prepare`, recorded in phase ``acquired`` without a CDI spec.

        Returns the record (also when already acquired or prepared), or None when the claim
        has none of our devices or the other driver instance holds it. A failure gives back
        what was acquired (owed releases) and raises :class:`PrepareError`."""
        with self._lock_for(uid):
            held = self.store.get(uid)
            if held is not None and held.phase in (ClaimPhase.ACQUIRED, ClaimPhase.PREPARED):
                if self.status is not None and self.status.needs(uid):
                    self._publish_status(held)  # a restart: write the condition again
                return held
            if held is not None:
                self._refuse_if_busy(held)
                self._abandon(held, "the driver stopped")
            rec = self._plan(namespace, name, uid)
            if not rec.devices or not self._take(rec):
                return None
            rec.acquired_before_bind = True
            try:
                self._acquire_all(rec)
                rec.phase, rec.owner = ClaimPhase.ACQUIRED, ""
                self.store.put(rec)
            except Exception:
                self._abandon(rec, "the acquire before binding failed", lost=False)
                raise
            log.info(
                "claim acquired before binding",
                extra={
                    "claim": f"{namespace}/{name}",
                    "uid": uid,
                    "devices": ",".join(d.device for d in rec.devices),
                },
            )
            self._publish_status(rec)
            return rec

    def give_back(self, uid: str, why: str) -> bool:
        """Release a claim acquired before binding whose pod will not come (the claim was
        deleted, deallocated or placed elsewhere): its sessions become owed releases.
        Prepared claims are left to the kubelet's unprepare. True if something was given."""
        with self._lock_for(uid):
            rec = self.store.get(uid)
            if rec is None or rec.phase is not ClaimPhase.ACQUIRED:
                return False
            self._abandon(rec, why, lost=False)
            if self.status is not None:
                self.status.forget(uid)
        with self._guard:
            self._locks.pop(uid, None)
        return True

    def unprepare(self, namespace: str, name: str, uid: str) -> None:
        with self._lock_for(uid):
            with self.store.edit(durable=False) as txn:
                rec = claim_of(txn, uid)
                if rec is None:
                    self.cdi.remove(uid)  # a spec without a record can only be a leftover
                    return
                self._refuse_if_busy(rec)
                rec.phase, rec.owner = ClaimPhase.UNPREPARING, self.store.instance
                txn.put(f"claim/{uid}", Record(rec))
                self.cdi.remove(uid)
            if self.status is not None:
                self.status.forget(uid)
            self._release_all(rec)
            self.store.drop(uid)
            if self.usage is not None:
                self.usage.claim_done(uid)
            self._forget(uid)
            log.info("claim unprepared", extra={"claim": f"{namespace}/{name}", "uid": uid})
        with self._guard:
            self._locks.pop(uid, None)

    def recover(self) -> dict[str, int]:
        """Start-up clean-up; call after the registry has loaded and the store is open."""
        for loss in self.store.losses():  # losses of earlier processes stay visible
            metrics.LOSSES.seen(loss.backend, loss.at)
        counts = {
            "stale_boot": 0,
            "half_prepared": 0,
            "unpreparing": 0,
            "cdi_rewritten": 0,
            "cdi_orphans": 0,
        }
        for rec in self.store.claims():
            if rec.boot_id != self.store.boot_id:
                self._abandon(rec, "the node rebooted")
                counts["stale_boot"] += 1
            elif rec.owner and rec.owner != self.store.instance and self.store.alive(rec.owner):
                continue  # the other driver instance of this node is working on it
            elif rec.phase is ClaimPhase.PREPARING:
                self._abandon(rec, "the driver stopped")
                counts["half_prepared"] += 1
            elif rec.phase is ClaimPhase.UNPREPARING:
                self.cdi.remove(rec.uid)  # the kubelet's retried unprepare finishes it
                counts["unpreparing"] += 1
            elif self._ensure_cdi(rec.uid):
                counts["cdi_rewritten"] += 1
        with self.store.edit() as txn:  # specs listed after every record they belong to
            known = {uid for uid in self.cdi.claims() if claim_of(txn, uid) is not None}
            for uid in self.cdi.claims() - known:
                self.cdi.remove(uid)
                counts["cdi_orphans"] += 1
        self.releases.poke()
        return counts

    def prepared_count(self) -> int:
        return self.store.prepared

    def _existing(self, uid: str) -> list[PreparedDevice] | None:
        """The answer for a claim already prepared, or None after clearing a half-done one
        (ours, or a dead instance's); raises while the other live instance works on it."""
        rec = self.store.get(uid)
        if rec is None:
            return None
        self._refuse_if_busy(rec)
        if rec.phase is ClaimPhase.PREPARED:
            self._ensure_cdi(uid)  # tmpfs lost it, or someone deleted it
            if self.status is not None and self.status.needs(uid):
                self._publish_status(rec)  # a restart, or an earlier write given up
            return self._result(rec)
        if rec.phase is ClaimPhase.ACQUIRED:
            return self._prepare_acquired(rec)
        self._abandon(rec, "the driver stopped")
        return None

    def _prepare_acquired(self, rec: ClaimRecord) -> list[PreparedDevice] | None:
        """A claim acquired before binding: only the CDI spec is left to write, if the
        allocation is still the one acquired (else it is given back: None, prepare anew)."""
        now = self._plan(rec.namespace, rec.name, rec.uid)
        if [(d.pool, d.device) for d in now.devices] != [(d.pool, d.device) for d in rec.devices]:
            self._abandon(rec, "the claim was allocated other devices", lost=False)
            return None
        try:
            self._finish(rec)
        except Exception:
            self._abandon(rec, "the prepare failed", lost=False)
            raise
        log.info("claim prepared (acquired before binding)", extra={"uid": rec.uid})
        self._publish_status(rec)
        return self._result(rec)

    def _take(self, rec: ClaimRecord) -> bool:
        """Record the claim as ours before the first acquire: atomically, since the other
        driver instance may be planning it right now (not synced: the first token syncs it)."""
        with self.store.edit(durable=False) as txn:
            if claim_of(txn, rec.uid) is not None:
                return False
            txn.put(f"claim/{rec.uid}", Record(rec))
            return True

    def _finish(self, rec: ClaimRecord) -> None:
        """Acquired: write the CDI spec and phase PREPARED under one lock (see the module
        docstring). PREPARED needs no sync of its own: a crash before it reaches the disk is
        a reboot, after which every claim of the old boot is released anyway."""
        rec.phase, rec.owner = ClaimPhase.PREPARED, ""
        with self.store.edit(durable=False) as txn:
            self._write_cdi(rec)
            txn.put(f"claim/{rec.uid}", Record(rec.clone()))

    def _refuse_if_busy(self, rec: ClaimRecord) -> None:
        owner = rec.owner
        if (
            rec.phase is not ClaimPhase.PREPARED
            and owner
            and owner != self.store.instance
            and self.store.alive(owner)
        ):
            raise PrepareError(
                f"ResourceClaim {rec.namespace}/{rec.name} is being {rec.phase.value[:-3]}ed by "
                f"driver instance {owner} (a rolling update); the kubelet retries",
                "busy",
            )

    def _ensure_cdi(self, uid: str) -> bool:
        """Rewrite a prepared claim's missing spec (under the lock); True if written."""
        with self.store.edit() as txn:
            rec = claim_of(txn, uid)
            if rec is None or rec.phase is not ClaimPhase.PREPARED or self.cdi.exists(uid):
                return False
            try:
                self._write_cdi(rec)
            except PrepareError as err:
                log.error("cannot rewrite CDI spec", extra={"uid": uid, "error": str(err)})
                return False
            return True

    # -- planning -------------------------------------------------------------------------
    def _plan(self, namespace: str, name: str, uid: str) -> ClaimRecord:
        try:
            claim = self.claims.get_claim(namespace, name)
        except ClaimNotFoundError as err:
            raise PrepareError(str(err), "claim") from None
        real_uid = (claim.get("metadata") or {}).get("uid")
        if real_uid != uid:
            raise PrepareError(
                f"ResourceClaim {namespace}/{name} has UID {real_uid}, the kubelet asked for "
                f"{uid}: the claim was deleted and recreated",
                "claim",
            )
        if self.usage is not None:
            self.usage.claim_prepared(uid, claim)
        allocation = (claim.get("status") or {}).get("allocation")
        if not allocation:
            raise PrepareError(f"ResourceClaim {namespace}/{name} is not allocated", "claim")
        devices = allocation.get("devices") or {}
        results = [r for r in devices.get("results") or [] if r.get("driver") == self.driver]
        if "config" in devices:
            configs, base = devices.get("config") or [], "status.allocation.devices.config"
        else:
            configs = ((claim.get("spec") or {}).get("devices") or {}).get("config") or []
            base = "spec.devices.config"
        records = []
        resource_ids: dict[str, str] = {}
        for r in results:
            request, device = str(r.get("request")), str(r.get("device"))
            pool = str(r.get("pool"))
            try:
                params = effective_parameters(configs, request, self.driver, base)
            except InvalidParametersError as err:
                raise PrepareError(f"ResourceClaim {namespace}/{name}: {err}", "params") from None
            admin = bool(r.get("adminAccess"))
            backend = self._backend_for(device, admin=admin)
            expected = (
                shared_pool_name(backend.name)
                if backend.spec.access is AccessMode.SHARED
                else self.pool
            )
            if pool != expected:
                raise PrepareError(
                    f"device {device} of request {request} is in pool {pool!r}; backend "
                    f"{backend.name!r} ({backend.spec.access.value}) is served from pool "
                    f"{expected!r}",
                    "claim",
                )
            self._check_params(backend, params)
            share_id, lanes = _share(r, backend, f"ResourceClaim {namespace}/{name}")
            mode = params.session_mode
            if mode is None and lanes is not None:
                vendor = profile(backend.spec.type)
                exclusive = lanes >= backend.spec.lanes
                mode = vendor.exclusive_session_mode if exclusive else vendor.shared_session_mode
            rid = backend.spec.resource_id
            if rid in resource_ids:
                raise PrepareError(
                    f"ResourceClaim {namespace}/{name}: devices {resource_ids[rid]} and {device} "
                    f"are both QRMI resource {rid!r}; the env contract names each resource once "
                    "per container, so request lanes of one backend in separate claims",
                    "env",
                )
            resource_ids[rid] = device
            records.append(
                DeviceRecord(
                    request=request,
                    pool=pool,
                    device=device,
                    backend=backend.name,
                    credentials_secret=params.credentials_secret,
                    session_mode=mode,
                    session_max_ttl_seconds=params.session_max_ttl_seconds,
                    share_id=share_id,
                    lanes=lanes,
                    admin_access=admin,
                )
            )
        return ClaimRecord(
            uid=uid,
            namespace=namespace,
            name=name,
            devices=records,
            boot_id=self.store.boot_id,
            owner=self.store.instance,
        )

    def _backend_for(self, device: str, *, admin: bool = False) -> QuantumBackend:
        """The configured backend of ``device``: a QPU device is named after its backend
        (checked first, so a backend whose own name ends in ``-lane-<n>`` is found), a lane
        device not. A backend in error (bad config, missing credentials) serves admin access
        only: there is nothing to acquire."""
        whole = self.registry.get(device)
        if whole is not None:
            if whole.error and not admin:
                raise PrepareError(f"device {device}: {whole.error}", "backend")
            return whole.backend
        try:
            backend_name, lane = split_device_id(device)
        except ValueError as err:
            raise PrepareError(str(err), "claim") from None
        state = self.registry.get(backend_name)
        if state is None:
            raise PrepareError(
                f"device {device}: backend {backend_name!r} is not configured on this node",
                "backend",
            )
        if state.error and not admin:
            raise PrepareError(f"device {device}: {state.error}", "backend")
        if lane >= state.backend.spec.lanes:
            raise PrepareError(
                f"device {device}: backend {backend_name!r} has {state.backend.spec.lanes} lanes",
                "claim",
            )
        return state.backend

    @staticmethod
    def _check_params(backend: QuantumBackend, params: Effective) -> None:
        vendor = profile(backend.spec.type)
        mode_key, ttl_key = vendor.session_mode_key, vendor.session_ttl_key
        for field, value, key in (
            ("sessionMode", params.session_mode, mode_key),
            ("sessionMaxTtlSeconds", params.session_max_ttl_seconds, ttl_key),
        ):
            if value is not None and key is None:
                raise PrepareError(
                    f"{field}: backend {backend.name!r} (type {backend.spec.type.value}) has no "
                    "sessions; remove the field from the claim's parameters",
                    "params",
                )

    # -- clients and credentials ------------------------------------------------------------
    def _client(self, rec: ClaimRecord, dev: DeviceRecord) -> tuple[QuantumResourceClient, Grant]:
        state = self.registry.get(dev.backend)
        if state is None:
            raise PrepareError(
                f"backend {dev.backend!r} is no longer configured on this node", "backend"
            )
        if state.client is None:
            raise PrepareError(state.error or f"backend {dev.backend!r} has no client", "backend")
        overrides = dev.credentials_secret or dev.session_mode or dev.session_max_ttl_seconds
        if not overrides:
            creds = self.registry.credentials_for(dev.backend)
            return state.client, Grant(state.backend, "", creds)
        key = (rec.uid, dev.device)
        with self._guard:
            cached = self._clients.get(key)
            cached_creds = self._creds.get(key)
        if cached is not None and cached_creds is not None and cached[1].name == dev.backend:
            return cached[0], Grant(cached[1], "", cached_creds)
        backend, creds = self._override(rec, dev, state.backend)
        client = self.client_factory(backend, creds)
        with self._guard:
            self._clients[key] = (client, backend)
            self._creds[key] = creds
        return client, Grant(backend, "", creds)

    def _override(
        self, rec: ClaimRecord, dev: DeviceRecord, backend: QuantumBackend
    ) -> tuple[QuantumBackend, dict[str, str]]:
        spec = backend.spec
        config = dict(spec.config)
        vendor = profile(spec.type)
        mode_key, ttl_key = vendor.session_mode_key, vendor.session_ttl_key
        if dev.session_mode and mode_key:
            config[mode_key] = dev.session_mode
        if dev.session_max_ttl_seconds and ttl_key:
            config[ttl_key] = str(dev.session_max_ttl_seconds)
        update: dict[str, Any] = {"config": config}
        if dev.credentials_secret:
            ref = SecretRef(name=dev.credentials_secret, namespace=rec.namespace)
            update["credentials_secret_ref"] = ref
        effective = backend.model_copy(update={"spec": spec.model_copy(update=update)})
        if not dev.credentials_secret:
            return effective, self.registry.credentials_for(backend.name)
        try:
            data = self.claims.get_secret(rec.namespace, dev.credentials_secret)
        except ClaimNotFoundError as err:
            raise PrepareError(
                f"credentialsSecretRef: {err}; create it in namespace {rec.namespace}",
                "credentials",
            ) from None
        try:
            creds = resolve_credentials(
                effective, StaticCredentials({dev.credentials_secret: data})
            )
        except errors.CredentialsError as err:
            raise PrepareError(f"credentialsSecretRef: {err}", "credentials") from None
        return effective, creds

    def _forget(self, uid: str) -> None:
        with self._guard:
            for key in [k for k in self._clients if k[0] == uid]:
                self._clients.pop(key, None)
                self._creds.pop(key, None)
            for key in [k for k in self._queue_seen if k[0] == uid]:
                del self._queue_seen[key]

    # -- claim status -------------------------------------------------------------------------
    def _publish_status(self, rec: ClaimRecord) -> None:
        """Hand the claim's ``status.devices`` entries to the background writer. Building
        them needs no vendor or apiserver call; one that cannot be built (the backend went
        from the config meanwhile) is left out, and nothing here may fail the prepare."""
        if self.status is None:
            return
        entries = []
        for dev in rec.devices:
            if dev.admin_access:
                entries += self._admin_status(dev)
                continue
            if dev.token is None:
                continue
            try:
                _, grant = self._client(rec, dev)
            except PrepareError as err:
                log.warning(
                    "no status for a device",
                    extra={"uid": rec.uid, "device": dev.device, "error": str(err)},
                )
                continue
            with self._guard:
                pending = self._queue_seen.get((rec.uid, dev.device))
                if rec.phase is ClaimPhase.PREPARED:
                    self._queue_seen.pop((rec.uid, dev.device), None)
            entry = device_status(
                driver=self.driver,
                pool=dev.pool,
                device=dev.device,
                backend=grant.backend,
                token=dev.token,
                acquired_at=dev.acquired_at or time.time(),
                node=self.node,
                pending_jobs=pending,
                share_id=dev.share_id,
                lanes=dev.lanes,
            )
            if rec.acquired_before_bind:
                # The binding condition the scheduler waits for; kept after the prepare (an
                # apply without it would remove it), and alone before (not Ready yet).
                held = acquired_condition(self.driver, entry["conditions"][0])
                ready = entry["conditions"] if rec.phase is ClaimPhase.PREPARED else []
                entry["conditions"] = [*ready, held]
            entries.append(entry)
        if entries:
            self.status.publish(rec.namespace, rec.name, rec.uid, entries)

    def _admin_status(self, dev: DeviceRecord) -> list[dict[str, Any]]:
        state = self.registry.get(dev.backend)
        if state is None:
            return []  # gone from the config meanwhile: no entry, as for acquired devices
        status = admin_device_status(
            driver=self.driver,
            pool=dev.pool,
            device=dev.device,
            backend=state.backend,
            node=self.node,
            at=time.time(),
        )
        return [status]

    # -- acquire / release ------------------------------------------------------------------
    def _acquire_all(self, rec: ClaimRecord) -> None:
        """Acquire device by device, each token recorded (synced) as the vendor returns it;
        admin-access devices are not acquired."""
        for dev in rec.devices:
            if dev.admin_access:
                continue
            client, grant = self._client(rec, dev)
            state = self.registry.get(dev.backend)
            with self._guard:
                self._queue_seen[(rec.uid, dev.device)] = (
                    state.health.pending_jobs if state is not None else None
                )
            try:
                dev.token = client.acquire()
            except errors.QpuError as err:
                self.registry.reprobe(dev.backend)
                raise PrepareError(f"device {dev.device}: {err}", f"vendor_{err.kind}") from None
            dev.acquired_at = time.time()
            dev.held_at_most = profile(grant.backend.spec.type).held_at_most(
                grant.backend.spec.config
            )
            self.store.put(rec)  # the token is on disk before anything else can fail
            crash_point("after-acquire-recorded")

    def _abandon(self, rec: ClaimRecord, why: str, *, lost: bool = True) -> None:
        """Give up a claim record: its acquired sessions become owed releases (recorded in
        the same write that drops the record, then tried at once), its spec goes."""
        if lost:
            self._report_lost(rec, why)
        debts = [
            OwedRelease(
                id=f"{rec.uid}-{dev.device}",
                backend=dev.backend,
                token=dev.token,
                device=dev.device,
                claim_uid=rec.uid,
                namespace=rec.namespace,
                reason=why,
                expires_at=(
                    dev.acquired_at + dev.held_at_most
                    if dev.acquired_at is not None and dev.held_at_most
                    else None
                ),
                credentials_secret=dev.credentials_secret,
                owner=self.store.instance,
            )
            for dev in rec.devices
            if dev.token and not dev.released
        ]
        with self.store.edit() as txn:
            if claim_of(txn, rec.uid) not in (rec, None):
                return  # the other instance changed it meanwhile: it is theirs to finish
            for debt in debts:
                self.store.owe(txn, debt)
            txn.delete(f"claim/{rec.uid}")
            self.cdi.remove(rec.uid)
        for debt in debts:
            self.releases.pay(Debt(debt.id, debt.backend, debt.token, why, debt.expires_at))
        self._forget(rec.uid)

    def _report_lost(self, rec: ClaimRecord, why: str) -> None:
        """A half-done prepare: the first device without a token may have been acquired.

        Acquires run one at a time and each token is written before the next starts, so
        only that device's acquire can have been answered by the vendor unrecorded (the
        process died in between). Its token is unknown, so it cannot be released: say so,
        with how long the vendor holds it at most.
        """
        if rec.phase is not ClaimPhase.PREPARING:
            return
        dev = next(
            (d for d in rec.devices if d.token is None and not d.released and not d.admin_access),
            None,
        )
        if dev is None:
            return
        state = self.registry.get(dev.backend)
        bound: int | None = None
        if state is not None:
            config = dict(state.backend.spec.config)
            vendor = profile(state.backend.spec.type)
            if vendor.session_ttl_key and dev.session_max_ttl_seconds:
                config[vendor.session_ttl_key] = str(dev.session_max_ttl_seconds)
            bound = vendor.held_at_most(config)
        at = metrics.LOSSES.report(
            dev.backend,
            bound,
            f"acquire may have been in flight when {why}",
            uid=rec.uid,
            device=dev.device,
        )
        self.store.remember_loss(dev.backend, at)

    def _release_all(self, rec: ClaimRecord) -> None:
        """Release every acquired, unreleased device of an unpreparing claim; raise on a
        transient failure (after trying all of them) so the kubelet retries the call."""
        failures: list[str] = []
        for dev in rec.devices:
            if not dev.token or dev.released:
                continue
            try:
                client, _ = self._client(rec, dev)
                client.release(dev.token)
            except _TRANSIENT as err:
                failures.append(f"device {dev.device}: {err}")
                continue
            except (errors.QpuError, PrepareError) as err:
                log.warning(
                    "release failed permanently; the acquisition expires at the vendor",
                    extra={"uid": rec.uid, "device": dev.device, "error": str(err)},
                )
            dev.released = True
            if self.usage is not None:
                self.usage.device_released(rec, dev)
            if any(d.token and not d.released for d in rec.devices):
                self.store.put(rec)  # more to release: remember this one is done
        if failures:
            self.store.put(rec)
            raise PrepareError("; ".join(failures), "release")

    def client_for(self, debt: Debt) -> QuantumResourceClient | None:
        """The client that releases an owed session (per-claim credentials read again)."""
        owed = self.store.owed_release(debt.id)
        state = self.registry.get(debt.backend)
        if owed is None or state is None or state.client is None:
            return None
        if not owed.credentials_secret:
            return state.client
        dev = DeviceRecord(
            request="",
            pool="",
            device=owed.device,
            backend=owed.backend,
            credentials_secret=owed.credentials_secret,
        )
        rec = ClaimRecord(uid=owed.claim_uid, namespace=owed.namespace, name="")
        try:
            return self._client(rec, dev)[0]
        except PrepareError as err:
            log.warning(
                "cannot build the release client", extra={"debt": debt.id, "error": str(err)}
            )
            return None

    # -- CDI --------------------------------------------------------------------------------
    def _write_cdi(self, rec: ClaimRecord) -> None:
        grants: list[Grant] = []
        views: list[AdminView] = []
        for dev in rec.devices:
            if dev.admin_access:
                views.append(self._admin_view(dev))
                continue
            if dev.token is None:
                raise PrepareError(f"device {dev.device} was never acquired", "state")
            _, grant = self._client(rec, dev)
            grants.append(Grant(grant.backend, dev.token, grant.credentials))
        try:
            env = render(grants).env if grants else {}
            if views:
                env.update(render_admin(views).env)
        except EnvContractError as err:
            raise PrepareError(f"claim {rec.namespace}/{rec.name}: {err}", "env") from None
        rec.cdi_device_id = self.cdi.write(rec.uid, env)

    def _admin_view(self, dev: DeviceRecord) -> AdminView:
        """What an admin-access device shows: the backend and the node's last probe."""
        state = self.registry.get(dev.backend)
        if state is None:
            raise PrepareError(
                f"backend {dev.backend!r} is no longer configured on this node", "backend"
            )
        health = state.health
        probed = health.status != "unknown"
        return AdminView(
            backend=state.backend,
            device=dev.device,
            status=health.status,
            reason=state.error or health.reason,
            pending_jobs=health.pending_jobs,
            checked_at=rfc3339(health.checked_at) if probed else "",
        )

    def _result(self, rec: ClaimRecord) -> list[PreparedDevice]:
        cdi_id = rec.cdi_device_id or self.cdi.device_id(rec.uid)
        return [
            PreparedDevice(d.request, d.pool, d.device, cdi_id, d.share_id or "")
            for d in rec.devices
        ]

    def _lock_for(self, uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(uid, threading.Lock())


def _share(
    result: dict[str, Any], backend: QuantumBackend, claim: str
) -> tuple[str | None, int | None]:
    """The ``shareID`` of an allocation result and the lanes it consumes (None, None for a
    lane device, which has neither); a share of a device with consumable capacity that
    names no lanes takes the published default, one."""
    share_id = result.get("shareID") or None
    consumed = result.get("consumedCapacity")
    if share_id is None and consumed is None:
        return None, None
    raw = (consumed or {}).get(CAPACITY_LANES, "1")
    try:
        lanes = int(str(raw))
    except ValueError:
        lanes = 0
    if not 1 <= lanes <= backend.spec.lanes:
        raise PrepareError(
            f"{claim}: device {result.get('device')} consumes {raw!r} lanes; backend "
            f"{backend.name!r} has 1..{backend.spec.lanes} (capacity.requests.{CAPACITY_LANES})",
            "claim",
        )
    return share_id, lanes
