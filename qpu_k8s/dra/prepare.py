"""NodePrepareResources / NodeUnprepareResources: acquire and release QPUs for a claim.

Prepare reads the claim from the apiserver, takes the allocation results of our driver,
acquires each device through the QRMI adapter, renders the env contract into a CDI spec and
returns the CDI device IDs. Unprepare releases and removes the spec.

Idempotent and crash-safe through the checkpoint (:mod:`.state`):

* a claim is acquired once: a repeated prepare (the kubelet retrying, a second pod sharing
  the claim, a plugin restart) answers from the checkpoint with the same CDI ID; kubelet
  semantics are one prepare per claim per node, and one unprepare once its last pod is gone;
* the record is written *before* the first acquire (phase ``preparing``) and after each, so
  a crash mid-prepare leaves the tokens to release on the next call or at start-up; the
  one token a crash can lose is that of an acquire the vendor answered just before the
  crash, ahead of its write (acquires run one at a time, so it is the first device
  without a token): reported as possibly lost (log, ``qpu_k8s_dra_acquisitions_lost_total``)
  with the time after which the vendor frees it (the session max TTL);
* a failed prepare releases what it acquired and leaves nothing behind;
* unprepare of an unknown claim succeeds; a release that fails for a transient reason
  (timeout, vendor unavailable) fails the call so the kubelet retries; a permanent one
  (rejected credentials, unknown session, backend removed from the config) is logged and
  the acquisition is left to expire at the vendor (its session max TTL).

Per-claim parameters (:mod:`.params`) may set the IBM session mode and max TTL, and name a
Secret in the claim's namespace whose credentials replace the backend's (the paper's
per-user credentials); such a device gets its own QRMI client, cached per claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qpu_k8s.core import errors
from qpu_k8s.core.credentials import StaticCredentials, resolve_credentials
from qpu_k8s.core.envcontract import EnvContractError, Grant, render
from qpu_k8s.core.faultpoints import crash_point
from qpu_k8s.core.model import AccessMode, QuantumBackend, SecretRef, split_device_id
from qpu_k8s.core.qrmi_client import ClientFactory, QuantumResourceClient
from qpu_k8s.core.vendors import profile
from qpu_k8s.node.registry import BackendRegistry
from qpu_k8s.resourceslices.slices import shared_pool_name

from . import metrics
from .cdi import CdiWriter
from .claims import ClaimNotFoundError, ClaimSource
from .params import Effective, InvalidParametersError, effective_parameters
from .state import ClaimPhase, ClaimRecord, DeviceRecord, StateStore

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
        on_acquire_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.driver = driver
        self.pool = pool
        self.registry = registry
        self.claims = claims
        self.cdi = cdi
        self.store = store
        self.client_factory = client_factory or registry.client_factory
        self.on_acquire_failure = on_acquire_failure
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._clients: dict[tuple[str, str], tuple[QuantumResourceClient, QuantumBackend]] = {}
        self._creds: dict[tuple[str, str], dict[str, str]] = {}

    # -- public API -----------------------------------------------------------------------
    def prepare(self, namespace: str, name: str, uid: str) -> list[PreparedDevice]:
        with self._lock_for(uid):
            rec = self.store.get(uid)
            if rec is not None and rec.phase is ClaimPhase.PREPARED:
                if not self.cdi.exists(uid):
                    self._write_cdi(rec)  # tmpfs lost it, or someone deleted it
                return self._result(rec)
            if rec is not None:  # a prepare that crashed half-way: undo, then start again
                self._report_lost(rec)
                self._release_all(rec, strict=False)
                self.cdi.remove(uid)
                self.store.drop(uid)
            rec = self._plan(namespace, name, uid)
            if not rec.devices:
                return []
            self.store.put(rec)
            try:
                self._acquire_all(rec)
                self._write_cdi(rec)
            except Exception:
                self._release_all(rec, strict=False)
                self.cdi.remove(uid)
                self.store.drop(uid)
                self._forget(uid)
                raise
            rec.phase = ClaimPhase.PREPARED
            self.store.put(rec)
            log.info(
                "claim prepared",
                extra={
                    "claim": f"{namespace}/{name}",
                    "uid": uid,
                    "devices": ",".join(d.device for d in rec.devices),
                },
            )
            return self._result(rec)

    def unprepare(self, namespace: str, name: str, uid: str) -> None:
        with self._lock_for(uid):
            rec = self.store.get(uid)
            if rec is None:
                self.cdi.remove(uid)  # a spec without a record can only be a leftover
                return
            self._release_all(rec, strict=True)
            self.cdi.remove(uid)
            self.store.drop(uid)
            self._forget(uid)
            log.info("claim unprepared", extra={"claim": f"{namespace}/{name}", "uid": uid})
        with self._guard:
            self._locks.pop(uid, None)

    def recover(self) -> dict[str, int]:
        """Start-up cleanup; call after the registry has loaded and the checkpoint is read."""
        counts = {"stale_boot": 0, "half_prepared": 0, "cdi_rewritten": 0, "cdi_orphans": 0}
        previous = self.store.previous_boot
        if previous is not None:
            for rec in previous.claims.values():
                if rec.phase is ClaimPhase.PREPARING:
                    self._report_lost(rec)
                self._release_all(rec, strict=False)
                self.cdi.remove(rec.uid)
                counts["stale_boot"] += 1
            self.store.previous_boot = None
            log.info(
                "node rebooted: cleaned the previous boot's claims",
                extra={"claims": counts["stale_boot"], "old_boot_id": previous.boot_id},
            )
        for rec in self.store.claims():
            if rec.phase is ClaimPhase.PREPARING:
                self._report_lost(rec)
                self._release_all(rec, strict=False)
                self.cdi.remove(rec.uid)
                self.store.drop(rec.uid)
                counts["half_prepared"] += 1
            elif not self.cdi.exists(rec.uid):
                try:
                    self._write_cdi(rec)
                    counts["cdi_rewritten"] += 1
                except PrepareError as err:
                    log.error("cannot rewrite CDI spec", extra={"uid": rec.uid, "error": str(err)})
        known = {rec.uid for rec in self.store.claims()}
        for uid in self.cdi.claims() - known:
            self.cdi.remove(uid)
            counts["cdi_orphans"] += 1
        return counts

    def prepared_count(self) -> int:
        return sum(1 for r in self.store.claims() if r.phase is ClaimPhase.PREPARED)

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
            backend = self._backend_for(device)
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
                    session_mode=params.session_mode,
                    session_max_ttl_seconds=params.session_max_ttl_seconds,
                )
            )
        return ClaimRecord(uid=uid, namespace=namespace, name=name, devices=records)

    def _backend_for(self, device: str) -> QuantumBackend:
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
        if state.error:
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

    # -- acquire / release ------------------------------------------------------------------
    def _acquire_all(self, rec: ClaimRecord) -> None:
        for dev in rec.devices:
            client, _ = self._client(rec, dev)
            try:
                dev.token = client.acquire()
            except errors.QpuError as err:
                if self.on_acquire_failure is not None:
                    self.on_acquire_failure(dev.backend)
                raise PrepareError(f"device {dev.device}: {err}", f"vendor_{err.kind}") from None
            self.store.put(rec)  # the token is on disk before anything else can fail
            crash_point("after-acquire-recorded")

    def _report_lost(self, rec: ClaimRecord) -> None:
        """A half-done prepare: the first device without a token may have been acquired.

        Acquires run one at a time and each token is written before the next starts, so
        only that device's acquire can have been answered by the vendor unrecorded (the
        process died in between). Its token is unknown, so it cannot be released: say so,
        with how long the vendor holds it at most.
        """
        dev = next((d for d in rec.devices if d.token is None and not d.released), None)
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
        metrics.ACQUISITIONS_LOST.labels(dev.backend).inc()
        log.error(
            "acquire may have been in flight when the driver stopped: token unknown, the "
            "vendor session (if one was opened) can only expire on its own",
            extra={
                "uid": rec.uid,
                "device": dev.device,
                "backend": dev.backend,
                "held_at_most_seconds": "unknown" if bound is None else str(bound),
            },
        )

    def _release_all(self, rec: ClaimRecord, *, strict: bool) -> None:
        """Release every acquired, unreleased device. ``strict``: raise on a transient
        failure (after trying all of them) so the caller's caller retries."""
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
            if self.store.get(rec.uid) is not None:
                self.store.put(rec)
        if failures and strict:
            raise PrepareError("; ".join(failures), "release")
        for f in failures:
            log.warning("release failed; giving up", extra={"uid": rec.uid, "error": f})

    # -- CDI --------------------------------------------------------------------------------
    def _write_cdi(self, rec: ClaimRecord) -> None:
        grants: list[Grant] = []
        for dev in rec.devices:
            if dev.token is None:
                raise PrepareError(f"device {dev.device} was never acquired", "state")
            _, grant = self._client(rec, dev)
            grants.append(Grant(grant.backend, dev.token, grant.credentials))
        try:
            env = render(grants)
        except EnvContractError as err:
            raise PrepareError(f"claim {rec.namespace}/{rec.name}: {err}", "env") from None
        rec.cdi_device_id = self.cdi.write(rec.uid, env.env)

    def _result(self, rec: ClaimRecord) -> list[PreparedDevice]:
        cdi_id = rec.cdi_device_id or self.cdi.device_id(rec.uid)
        return [PreparedDevice(d.request, d.pool, d.device, cdi_id) for d in rec.devices]

    def _lock_for(self, uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(uid, threading.Lock())
