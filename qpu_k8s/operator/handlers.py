"""Kopf handlers: thin adapters from kopf's causes to the :class:`Controller`.

The registry is built per controller (no module-level handlers, no global state), so the
CLI, ``kopf.testing.KopfRunner`` and unit tests all run the same handlers. Kopf keeps its
bookkeeping in annotations under ``quantum.example.com/`` (not in status, which belongs to
the operator's schema) and its finalizer is ``quantum.example.com/cleanup``.

Peering: Kopf's peering is not leader election. Two operators with the same priority both
act, and one with a higher priority only *pauses* the others while it is alive. The
Deployment therefore runs exactly one replica with the Recreate strategy, and the operator
runs ``--standalone`` by default (no KopfPeering objects needed). ``--peering NAME`` is
there for the documented Kopf use: pausing this operator while a developer's copy with a
higher ``--priority`` runs against the same cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import kopf

from qpu_k8s.core.names import API_GROUP, API_VERSION, BUDGET_PLURAL, PLURAL, USAGE_PLURAL
from qpu_k8s.operator import shared_claims as sc
from qpu_k8s.operator.controller import Controller, RetryLater
from qpu_k8s.operator.kube import (
    KUEUE_GROUP,
    KUEUE_VERSION,
    RESOURCE_GROUP,
    RESOURCE_VERSION,
    ApiStatusError,
    Connection,
)

PREFIX = API_GROUP
FINALIZER = f"{API_GROUP}/cleanup"


class _NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff-base, not kept: QuantumBackends are watched by an event handler.

    Kopf stores the last handled spec in an annotation to tell creations, updates and
    resumes apart, which costs one more write per object and per change (1000 PATCHes for
    1000 new backends). The controller needs no such record: ``status.observedGeneration``
    against ``metadata.generation`` says whether a spec is new (:meth:`Controller.observe`).
    With nothing fetched, every event is a "creation" to kopf, which has no handler for it;
    only the deletion handler (and so the finalizer) stays kopf's, and it needs no diff.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        # Kopf deep-copies the whole object for every event to build this; nothing reads it.
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def make_settings(*, standalone: bool = True, priority: int = 0) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.persistence.finalizer = FINALIZER
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    s.persistence.diffbase_storage = _NoDiffBase()
    s.posting.reporting_component = "qpu-k8s-operator"
    s.posting.level = logging.WARNING  # our own Events say what changed; skip kopf's chatter
    s.peering.standalone = standalone
    s.peering.priority = priority
    s.networking.request_timeout = 30.0
    s.networking.connect_timeout = 10.0
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    s.watching.connect_timeout = 10.0
    return s


def connection_info(conn: Connection, namespace: str) -> kopf.ConnectionInfo:
    """Kopf's credentials from the same configuration our own client uses."""
    cfg = conn.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or ("Bearer" if token else None),
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        default_namespace=namespace,
    )


# Kopf's own session opens a connection per concurrent request, without limit: a burst of
# 1000 new backends left ~100 connections open, each with a 128 KiB TLS read buffer (13 MiB
# of the operator's heap). Long-lived watch streams take one each (fewer than ten), the
# rest queue for one of these.
MAX_CONNECTIONS = 24


def limited_session(info: kopf.ConnectionInfo, limit: int = MAX_CONNECTIONS) -> kopf.AiohttpSession:
    """Kopf's session for ``info``, as kopf builds it, but with at most ``limit`` connections.

    Call it from a running event loop (an async login handler): aiohttp binds the session
    to the loop it was made in.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),  # the token or basic auth
    )
    return kopf.AiohttpSession(
        server=info.server, default_namespace=info.default_namespace, aiohttp_session=session
    )


def selector_filter(selector: str) -> dict[str, Any] | None:
    """Kopf's label filter for an equality selector ``k=v,k2`` (``k2``: label present)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        if any(op in part for op in ("!=", " in ", " notin ", "!")):
            raise ValueError(f"backend selector {selector!r}: only k=v and k terms are supported")
        key, eq, value = part.partition("=")
        out[key.strip()] = value.strip().lstrip("=") if eq else kopf.PRESENT
    return out or None


def _retry(err: Exception) -> kopf.TemporaryError:
    delay = err.delay if isinstance(err, RetryLater) else 5.0
    return kopf.TemporaryError(str(err), delay=delay)


def build_registry(ctl: Controller, conn: Connection | None = None) -> kopf.OperatorRegistry:
    """All handlers of the operator, bound to ``ctl``."""
    reg = kopf.OperatorRegistry()
    backends = (API_GROUP, API_VERSION, PLURAL)
    only = selector_filter(ctl.cfg.backend_selector)

    if conn is not None:

        @kopf.on.login(id="login", registry=reg)
        async def login(**_: Any) -> kopf.AiohttpSession:
            return limited_session(connection_info(conn, ctl.cfg.namespace))

    @kopf.on.startup(id="startup", registry=reg)
    async def startup(**_: Any) -> None:
        await ctl.start()

    @kopf.on.cleanup(id="cleanup", registry=reg)
    async def cleanup(**_: Any) -> None:
        await ctl.stop()

    @kopf.on.probe(registry=reg, id="operator")
    def probe(**_: Any) -> dict[str, Any]:
        return ctl.health()

    @kopf.on.event(*backends, id="backend", labels=only, registry=reg)
    async def backend(body: kopf.Body, type: str | None, **_: Any) -> None:
        # A deleted or deleting backend is the deletion handler's (the finalizer's).
        if type != "DELETED" and not body.get("metadata", {}).get("deletionTimestamp"):
            ctl.observe(body)

    @kopf.on.delete(*backends, id="delete", labels=only, registry=reg, backoff=5)
    async def delete(body: kopf.Body, runtime: Any, **_: Any) -> None:
        try:
            await ctl.finalize(body, runtime.total_seconds())
        except (RetryLater, ApiStatusError) as err:
            raise _retry(err) from None

    @kopf.on.event("", "v1", "namespaces", id="namespace", registry=reg)
    async def namespace(body: kopf.Body, type: str | None, **_: Any) -> None:
        ctl.namespace_event(body, type)

    if ctl.cfg.dra:

        @kopf.on.event(
            RESOURCE_GROUP,
            RESOURCE_VERSION,
            "resourceclaims",
            id="claim",
            labels={sc.MANAGED_BY_KEY: sc.MANAGED_BY},
            registry=reg,
        )
        async def claim(**_: Any) -> None:
            ctl.claims_changed()

    if ctl.cfg.budgets:
        # Event handlers only: the operator writes budgets' status, never their metadata.
        @kopf.on.event(API_GROUP, API_VERSION, BUDGET_PLURAL, id="budget", registry=reg)
        async def budget(body: kopf.Body, type: str | None, **_: Any) -> None:
            ctl.budget_event(body, type)

        @kopf.on.event(API_GROUP, API_VERSION, USAGE_PLURAL, id="usage", registry=reg)
        async def usage(body: kopf.Body, **_: Any) -> None:
            ctl.usage_event(body)

    if ctl.cfg.kueue_admission_check:
        # Event handlers only: no finalizer or annotation of ours lands on Kueue's objects.
        @kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "workloads", id="workload", registry=reg)
        async def workload(body: kopf.Body, type: str | None, **_: Any) -> None:
            ctl.kueue_event("workload", body, type)

        @kopf.on.event(
            KUEUE_GROUP, KUEUE_VERSION, "admissionchecks", id="admissioncheck", registry=reg
        )
        async def admissioncheck(body: kopf.Body, type: str | None, **_: Any) -> None:
            ctl.kueue_event("admissioncheck", body, type)

        @kopf.on.event(
            KUEUE_GROUP, KUEUE_VERSION, "resourceflavors", id="resourceflavor", registry=reg
        )
        async def resourceflavor(body: kopf.Body, type: str | None, **_: Any) -> None:
            ctl.kueue_event("resourceflavor", body, type)

    return reg
