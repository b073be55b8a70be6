"""Allocate → QRMI acquire → the env contract; and the one place that releases.

Decisions:

* One acquisition per backend per container. Several lanes of one backend in one container
  are one acquisition (one vendor session): the env contract has one token per resource
  name, so a second session could not be handed to the container anyway. The extra lanes
  still count against the backend's concurrency. GetPreferredAllocation spreads a
  container's devices over distinct backends so this rarely happens.
* All or nothing. If any acquire of a call fails, every acquisition this call made is
  released before the error is returned, and the error names the backend, the QRMI
  resource and the redacted cause; the kubelet shows it as the pod's admission error.
* Credentials reach the container only through the Allocate response ``envs``, as
  ``{resource_id}_{KEY}`` (e.g. ``ibm_torino_QRMI_IBM_QCS_IAM_APIKEY``; Pasqal
  username/password also unprefixed), because ``QRMIService()`` in the pod reads them from
  its environment. Exposure: the kubelet keeps Allocate responses in its device-manager
  checkpoint (``/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint``, root-only)
  and passes them to the container runtime; they are not in the pod object, its
  annotations, events, our logs, metrics or our checkpoint. They come from the Secret
  mounted at ``--credentials-dir`` (``<dir>/<secret name>/<KEY>``), which the registry reads
  and registers with the log redactor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from qpu_k8s.core import errors
from qpu_k8s.core.credentials import redact
from qpu_k8s.core.envcontract import (
    DEFAULT_DELIMITER,
    EnvContractError,
    Grant,
    JobEnv,
    check,
    render,
)
from qpu_k8s.core.faultpoints import crash_point
from qpu_k8s.core.model import split_device_id
from qpu_k8s.core.qrmi_client import QuantumResourceClient
from qpu_k8s.core.vendors import profile
from qpu_k8s.deviceplugin import metrics
from qpu_k8s.deviceplugin.devices import DeviceBoard
from qpu_k8s.deviceplugin.state import AcqState, Acquisition, Intent, Ledger
from qpu_k8s.node.registry import BackendRegistry, BackendState
from qpu_k8s.node.releases import Debt, ReleaseRunner

log = logging.getLogger(__name__)
T = TypeVar("T")


class AllocateError(Exception):
    """Allocate must fail; ``message`` is what the pod shows (never a secret).

    ``kind`` says why, for metrics and for the servicer's gRPC status: ``invalid`` (a
    request that can never work), ``unknown_device`` and ``config`` (this node cannot
    serve it now), or the vendor error kind of the failed acquire (``timeout``,
    ``unavailable``, ``auth``, ``not_found``, ``config``).
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class _Part:
    """One backend's share of one container request."""

    state: BackendState
    devices: tuple[str, ...]
    request: tuple[str, ...]


class _AcquireFailed(Exception):
    def __init__(self, part: _Part, err: errors.QpuError, *, late: bool = False) -> None:
        self.part = part
        self.err = err
        self.late = late  # the vendor call is still running (missed our deadline)


class Allocator:
    """Turns Allocate requests into acquisitions and env contracts; releases them later."""

    def __init__(
        self,
        board: DeviceBoard,
        registry: BackendRegistry,
        ledger: Ledger,
        resource_name: str,
        *,
        delimiter: str = DEFAULT_DELIMITER,
        abandon_after: float = 600.0,
        on_released: Callable[[Debt], None] | None = None,
    ) -> None:
        self.board = board
        self.registry = registry
        self.ledger = ledger
        self.resource_name = resource_name
        self.delimiter = delimiter
        # How long an acquire that missed its deadline is waited for before it is reported
        # lost (its token unknown); a later answer is still released.
        self.abandon_after = abandon_after
        self._lock = threading.Lock()
        # The client an acquisition was made with: a later config change may replace the
        # registry's client, but the session lives where it was opened.
        self._clients: dict[str, QuantumResourceClient] = {}
        self.on_released = on_released
        self.releases = ReleaseRunner(
            ledger, self.client_for, metrics.RELEASES, on_released=self._released
        )

    # -- Allocate ---------------------------------------------------------------------------
    def allocate(self, requests: Sequence[Sequence[str]]) -> list[JobEnv]:
        """Acquire for every container request; returns each container's environment."""
        start = time.perf_counter()
        try:
            envs = self._allocate(requests)
        except AllocateError as err:
            metrics.ALLOCATIONS.labels(err.kind).inc()
            raise
        finally:
            metrics.ALLOCATE_SECONDS.observe(time.perf_counter() - start)
        metrics.ALLOCATIONS.labels("ok").inc()
        return envs

    def _allocate(self, requests: Sequence[Sequence[str]]) -> list[JobEnv]:
        try:
            plans = [self._plan(list(ids)) for ids in requests]
        except AllocateError as err:
            log.warning("allocate refused", extra={"error": err.message})
            raise
        parts = [p for plan in plans for p in plan]
        acqs = self.ledger.begin(
            (
                Intent(
                    p.state.backend.name,
                    p.state.backend.spec.resource_id,
                    p.devices,
                    p.request,
                    profile(p.state.backend.spec.type).held_at_most(p.state.backend.spec.config),
                )
                for p in parts
            ),
            time.time(),
        )
        tokens: dict[int, str] = {}
        try:
            for i, (part, acq) in enumerate(zip(parts, acqs, strict=True)):
                tokens[i] = self._acquire(part, acq)
        except _AcquireFailed as failed:
            self._roll_back(acqs, tokens, failed)
        envs = []
        i = 0
        for plan in plans:
            grants = []
            for part in plan:
                name = part.state.backend.name
                grants.append(
                    Grant(part.state.backend, tokens[i], self.registry.credentials_for(name))
                )
                i += 1
            envs.append(render(grants, delimiter=self.delimiter))
        log.info(
            "allocated",
            extra={
                "containers": len(requests),
                "acquisitions": ",".join(a.id for a in acqs),
                "backends": ",".join(p.state.backend.name for p in parts),
                "devices": ";".join(",".join(ids) for ids in requests),
            },
        )
        return envs

    def _plan(self, ids: list[str]) -> list[_Part]:
        if not ids:
            raise AllocateError("invalid", "container request has no devices")
        groups: dict[str, list[str]] = {}
        for dev_id in dict.fromkeys(ids):
            dev = self.board.lookup(dev_id)
            if dev is None:
                try:
                    backend, _ = split_device_id(dev_id)
                except ValueError:
                    raise AllocateError(
                        "invalid",
                        f"{self.resource_name}: device {dev_id!r} is not a device of this plugin",
                    ) from None
                raise AllocateError(
                    "unknown_device",
                    f"{self.resource_name}: device {dev_id!r}: backend {backend!r} is not "
                    "offered on this node any more (removed from the config, or the node's "
                    "labels no longer match its nodeSelector)",
                )
            groups.setdefault(dev.backend, []).append(dev_id)
        request = tuple(sorted(dict.fromkeys(ids)))
        parts = []
        for backend, devs in groups.items():
            st = self.registry.get(backend)
            if st is None or st.client is None or st.error:
                why = (st.error if st else None) or "it is not configured on this node"
                raise AllocateError(
                    "config",
                    f"{self.resource_name}: backend {backend!r} cannot be used: {why}",
                )
            parts.append(_Part(st, tuple(devs), request))
        try:
            check([p.state.backend for p in parts], delimiter=self.delimiter)
        except EnvContractError as err:
            raise AllocateError("config", f"{self.resource_name}: {err}") from None
        return parts

    def _acquire(self, part: _Part, acq: Acquisition) -> str:
        client = part.state.client
        assert client is not None  # checked in _plan
        name = part.state.backend.name
        start = time.perf_counter()
        try:
            token = client.acquire(
                on_late=lambda token, err: self._late_acquire(acq, client, token, err)
            )
        except errors.QpuTimeoutError as err:
            if err.in_flight:  # the vendor may still answer: _late_acquire handles it
                self._give_up_later(acq)
                err = errors.QpuTimeoutError(
                    name, "acquire", f"{err.message} (a late answer is released at once)"
                )
            raise _AcquireFailed(part, err, late=err.in_flight) from None
        except errors.QpuError as err:
            raise _AcquireFailed(part, err) from None
        except Exception as exc:  # a client that broke its contract: still all-or-nothing
            msg = redact(str(exc)) or type(exc).__name__
            raise _AcquireFailed(part, errors.QpuUnavailableError(name, "acquire", msg)) from None
        finally:
            metrics.ACQUIRE_SECONDS.labels(name).observe(time.perf_counter() - start)
        # Recorded at once: the only window in which a crash loses the token is this write.
        try:
            self.ledger.acquired(acq.id, token, time.time())
        except Exception as exc:
            # Not recorded (disk full, read-only state dir): give the session back now.
            with contextlib.suppress(Exception):
                client.release(token)
            why = errors.QpuUnavailableError(
                name, "acquire", f"the acquisition could not be recorded ({exc}); released it"
            )
            raise _AcquireFailed(part, why) from None
        with self._lock:
            self._clients[acq.id] = client
        crash_point("after-acquire-recorded")
        return token

    def _late_acquire(
        self,
        acq: Acquisition,
        client: QuantumResourceClient,
        token: str | None,
        err: errors.QpuError | None,
    ) -> None:
        """An acquire that missed its Allocate's deadline answered: release what it got."""
        current = self.ledger.get(acq.id)
        if token is None:
            if current is not None and current.state is AcqState.ACQUIRING:
                self.ledger.abandon([acq.id])
            log.info(
                "late acquire failed; nothing is held",
                extra={"acquisition": acq.id, "backend": acq.backend, "error": str(err)},
            )
            return
        if current is None:  # forgotten long ago: nothing to record, give it back once
            with contextlib.suppress(errors.QpuError):
                client.release(token)
            return
        with self._lock:
            self._clients[acq.id] = client
        self.ledger.late_acquired(
            acq.id, token, "acquire answered after its Allocate had failed", time.time()
        )
        self.releases.pay(self.ledger.debt(acq.id))

    def _give_up_later(self, acq: Acquisition) -> None:
        """Report the acquisition lost if the vendor has not answered after ``abandon_after``."""

        def give_up() -> None:
            current = self.ledger.get(acq.id)
            if current is None or current.state is not AcqState.ACQUIRING:
                return
            now = time.time()
            self.ledger.lose(acq.id, now)
            metrics.LOSSES.report(
                acq.backend,
                acq.held_at_most,
                "an acquire gave no answer within the horizon (if it answers later it is "
                "released at once)",
                at=now,
                acquisition=acq.id,
            )

        timer = threading.Timer(self.abandon_after, give_up)
        timer.daemon = True
        timer.start()

    def _roll_back(
        self, acqs: list[Acquisition], tokens: dict[int, str], failed: _AcquireFailed
    ) -> None:
        err, part = failed.err, failed.part
        made = [acqs[i] for i in tokens]
        failed_id = acqs[len(tokens)].id
        self.ledger.abandon(
            a.id
            for i, a in enumerate(acqs)
            if i not in tokens and not (failed.late and a.id == failed_id)
        )
        reason = f"Allocate failed: acquire of {part.state.backend.name} failed"
        self.ledger.mark_releasing([a.id for a in made], reason, time.time())
        left = [a.backend for a in made if not self.releases.pay(self.ledger.debt(a.id))]
        backend = part.state.backend
        msg = (
            f"{self.resource_name}: acquire of backend {backend.name!r} (QRMI resource "
            f"{backend.spec.resource_id!r}, {backend.spec.type.value}) failed: "
            f"[{err.kind}] {err.message}. Nothing is held"
        )
        if made:
            msg += f" (released the {len(made)} other acquisition(s) of this call"
            msg += f"; release of {', '.join(left)} is retried in the background)" if left else ")"
        log.warning(
            "allocate failed", extra={"backend": backend.name, "kind": err.kind, "error": msg}
        )
        if err.kind in ("timeout", "unavailable", "auth"):
            # Let the health probe confirm at once, so the lanes stop being scheduled.
            self.registry.reprobe(backend.name)
        raise AllocateError(err.kind, msg)

    # -- release ----------------------------------------------------------------------------
    def client_for(self, debt: Debt) -> QuantumResourceClient | None:
        """The client an acquisition was made with (a config change may have replaced the
        registry's since: the session lives where it was opened), else the registry's."""
        with self._lock:
            client = self._clients.get(debt.id)
        if client is None:
            st = self.registry.get(debt.backend)
            client = st.client if st else None
        return client

    def _released(self, debt: Debt) -> None:
        """Paid: forget its client, then tell the agent (usage record)."""
        with self._lock:
            self._clients.pop(debt.id, None)
        if self.on_released is not None:
            self.on_released(debt)
