"""One interface over the QRMI lifecycle, implemented by the real ``qrmi`` package.

Every vendor call runs under our own deadline (see :mod:`qpu_k8s.core.deadline`), is timed into
the shared metrics, and turns qrmi's exceptions into :mod:`qpu_k8s.core.errors` with redacted
messages. Resources are built with ``QuantumResource.from_config``, so the process
environment is never read or changed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

import qrmi as _qrmi_module

from qpu_k8s.core import errors
from qpu_k8s.core.credentials import REDACTOR, redact
from qpu_k8s.core.deadline import DeadlineExceeded, Outcome, abandoned_calls, call_with_deadline
from qpu_k8s.core.faultpoints import crash_point
from qpu_k8s.core.metrics import (
    ABANDONED_CALLS,
    LATE_ACQUISITIONS,
    VENDOR_CALL_SECONDS,
    VENDOR_ERRORS,
)
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.vendors import profile

log = logging.getLogger(__name__)
# qrmi re-exports its Rust core with a star import that type checkers cannot follow.
qrmi: Any = _qrmi_module
T = TypeVar("T")

# A late release's outcome is kept this long for a retry of the same release to find.
_FORGET_RELEASES_AFTER = 3600.0
# qrmi objects kept between calls, process-wide (see _Kept).
MAX_KEPT_OBJECTS = 32
# Calls of one client that missed their deadline and still run (see QrmiClient._call).
MAX_STUCK_CALLS = 4
STUCK_RETRY_AFTER = 600.0


class TaskState(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


@dataclass(frozen=True)
class Health:
    """The answer of one health probe. ``healthy`` is what schedulers act on."""

    healthy: bool
    status: str  # online | offline | paused | unreachable | timeout | auth | error
    reason: str = ""
    pending_jobs: int | None = None
    checked_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CallTimeouts:
    """The deadline of each kind of vendor call, in seconds: the one deadline that call has.

    qrmi has no client timeout, so each call runs under ours. Probes must fail fast (a hung
    vendor shows as unhealthy within seconds); an acquire or a release may take longer.
    """

    probe: float = 10.0  # status, target, metadata
    acquire: float = 30.0
    release: float = 30.0
    task: float = 30.0  # task_start / status / result / stop

    @classmethod
    def uniform(cls, seconds: float) -> CallTimeouts:
        return cls(seconds, seconds, seconds, seconds)


# The answer of an acquire that missed its deadline: the token the vendor gave after all
# (whoever passed the handler now owns it and must release it), or why it failed.
LateAcquire = Callable[[str | None, errors.QpuError | None], None]
# The outcome of a release that missed its deadline: None when the vendor released it.
LateRelease = Callable[[errors.QpuError | None], None]


@runtime_checkable
class QuantumResourceClient(Protocol):
    """The QRMI lifecycle as every agent sees it (real vendors and test doubles alike).

    Every call is bounded by its own deadline (:class:`CallTimeouts` for QrmiClient) and
    raises :class:`~qpu_k8s.core.errors.QpuTimeoutError` when it passes; callers add no
    deadline of their own. ``on_late`` hands over what a timed-out acquire or release
    still did at the vendor.
    """

    backend: QuantumBackend

    def acquire(self, *, on_late: LateAcquire | None = None) -> str: ...
    def release(self, token: str, *, on_late: LateRelease | None = None) -> None: ...
    def health(self) -> Health: ...
    def target(self) -> dict[str, Any]: ...
    def metadata(self) -> dict[str, str]: ...
    def task_start(self, payload: Any, token: str | None = None) -> str: ...
    def task_status(self, task_id: str, token: str | None = None) -> TaskState: ...
    def task_result(self, task_id: str, token: str | None = None) -> str: ...
    def task_stop(self, task_id: str, token: str | None = None) -> None: ...


def _map_error(backend: str, op: str, exc: BaseException) -> errors.QpuError:
    msg = redact(str(exc)) or type(exc).__name__
    checks: list[tuple[str, type[errors.QpuError]]] = [
        ("AuthenticationFailedError", errors.QpuAuthError),
        ("ResourceNotFoundError", errors.QpuNotFoundError),
        ("TaskNotFoundError", errors.QpuNotFoundError),
        ("TaskNotReadyError", errors.QpuTaskNotReadyError),
        ("ConfigError", errors.QpuConfigError),
        ("EnvVarNotSetError", errors.QpuConfigError),
        ("InvalidInputError", errors.QpuConfigError),
        ("UnsupportedPayloadError", errors.QpuConfigError),
        ("UnsupportedFunctionError", errors.QpuConfigError),
        ("UnsupportedResourceTypeError", errors.QpuConfigError),
    ]
    for name, cls in checks:
        qcls = getattr(qrmi, name, None)
        if qcls is not None and isinstance(exc, qcls):
            return cls(backend, op, msg)
    low = msg.lower()
    if any(s in low for s in ("401", "403", "unauthorized", "forbidden", "authentication")):
        return errors.QpuAuthError(backend, op, msg)
    return errors.QpuUnavailableError(backend, op, msg)


class _Kept:
    """A process-wide cap on qrmi objects kept warm between calls (least recently used go).

    Every ``qrmi.QuantumResource`` runs its own async runtime: 2 threads and ~0.3 MiB
    each. Keeping one idle object per backend (its vendor token cached) makes calls
    cheap, but a node agent with 1000 backends then held 2000+ threads and 340 MiB. Past
    the cap, the least recently used kept object is dropped; a later call on that backend
    builds a new one (and fetches a vendor token again).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._lru: OrderedDict[int, tuple[QrmiClient, Any]] = OrderedDict()

    def add(self, client: QrmiClient, obj: Any) -> None:
        with self._lock:
            self._lru[id(obj)] = (client, obj)
            self._lru.move_to_end(id(obj))
            doomed = []
            while len(self._lru) > self.cap:
                doomed.append(self._lru.popitem(last=False)[1])
        for owner, old in doomed:
            owner._forget(old)

    def discard(self, obj: Any) -> None:
        with self._lock:
            self._lru.pop(id(obj), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)


KEPT = _Kept(MAX_KEPT_OBJECTS)


class QrmiClient:
    """:class:`QuantumResourceClient` backed by ``qrmi.QuantumResource``.

    A qrmi resource object caches its vendor token, so idle objects are pooled for the
    read-only calls; an object whose call timed out is dropped (its thread may still hold
    it). ``acquire`` always uses a fresh object so two acquisitions never share session
    state. Task calls with a token use an object bound to that acquisition.
    """

    def __init__(
        self,
        backend: QuantumBackend,
        credentials: Mapping[str, str] | None = None,
        *,
        timeouts: CallTimeouts | None = None,
    ) -> None:
        self.backend = backend
        self.timeouts = timeouts or CallTimeouts()
        self._config = {**backend.spec.config, **(credentials or {})}
        REDACTOR.register((credentials or {}).values())
        self._qrmi_type = getattr(qrmi.ResourceType, profile(backend.spec.type).qrmi_type)
        self._idle: list[Any] = []
        self._held: dict[str, Any] = {}
        self._stuck: dict[object, float] = {}
        # Releases that missed their deadline and may still reach the vendor, by token.
        self._releasing: dict[str, tuple[float, Future[None]]] = {}
        self._lock = threading.Lock()
        self._refilling = False

    # -- resource objects ---------------------------------------------------------------
    def _new(self, token: str | None = None) -> Any:
        cfg = dict(self._config)
        if token is not None:
            cfg["QRMI_JOB_ACQUISITION_TOKEN"] = token
        return qrmi.QuantumResource.from_config(self.backend.spec.resource_id, self._qrmi_type, cfg)

    def _checkout(self) -> Any:
        with self._lock:
            res = self._idle.pop() if self._idle else None
        if res is not None:
            KEPT.discard(res)
        return res

    def _checkin(self, res: Any) -> None:
        with self._lock:
            if len(self._idle) >= 4:
                return
            self._idle.append(res)
        KEPT.add(self, res)

    def _hold(self, token: str, res: Any) -> None:
        with self._lock:
            self._held[token] = res
        KEPT.add(self, res)

    def _unhold(self, token: str) -> Any:
        with self._lock:
            res = self._held.pop(token, None)
        if res is not None:
            KEPT.discard(res)
        return res

    def _refill(self) -> None:
        """Keep a warm spare: an acquire that took the last idle object starts one build.

        Without it, the next acquire while every object holds a session builds its own,
        whose first call fetches a vendor token (tens of ms) on the caller's clock. The spare
        is built and warmed by a status call under the probe deadline in one daemon thread
        (at most one per client), kept like any idle object (counted in ``KEPT``), and
        dropped if that call fails or times out. Acquires that come faster than a build
        still build their own.
        """
        with self._lock:
            if self._idle or self._refilling:
                return
            self._refilling = True
        threading.Thread(target=self._build_spare, name="qrmi-spare", daemon=True).start()

    def _build_spare(self) -> None:
        try:
            spare = self._call(
                "status", lambda r: (r.status(), r)[1], timeout=self.timeouts.probe, checkin=False
            )
            self._checkin(spare)
        except errors.QpuError:
            pass  # dropped; the next acquire builds its own, as without a spare
        finally:
            with self._lock:
                self._refilling = False

    def _forget(self, res: Any) -> None:
        """Evicted by the process-wide cap: stop keeping ``res`` (idle or held)."""
        with self._lock:
            self._idle = [o for o in self._idle if o is not res]
            for token in [t for t, o in self._held.items() if o is res]:
                del self._held[token]

    def _call(
        self,
        op: str,
        fn: Callable[[Any], T],
        *,
        obj: Any = None,
        token: str | None = None,
        timeout: float,
        checkin: bool = True,
        on_late: Callable[[Outcome[T]], None] | None = None,
        capped: bool = True,
    ) -> T:
        """Run ``fn(resource)`` under ``timeout``, with metrics and error mapping.

        The resource is ``obj`` when given, else an idle pooled one (no token) or a new one
        bound to ``token``. It goes back to the pool after the call when ``checkin`` allows
        it, never after a timeout (its thread may still be using it).

        A call that misses its deadline keeps a thread (and a qrmi object: two more) until
        the vendor answers, which a hanging vendor never does. So while ``MAX_STUCK_CALLS``
        of this client's calls are stuck, new ones (``capped``) fail at once instead of
        stacking up more threads; the probes say "timeout" meanwhile, and the first stuck
        call that returns lets calls through again. Should none ever return (a connection
        the vendor forgot), one more call is let through every ``STUCK_RETRY_AFTER``.
        """
        name = self.backend.name
        if capped:
            self._refuse_if_stuck(op)
        pooled = obj is None and token is None
        res = obj if obj is not None else (self._checkout() if pooled else None)
        holder: list[Any] = []
        start = time.perf_counter()
        key = object()
        ended = [False]

        def run() -> T:
            try:
                o = res if res is not None else self._new(token)
                holder.append(o)
                return fn(o)
            finally:
                with self._lock:
                    ended[0] = True
                    self._stuck.pop(key, None)

        try:
            out = call_with_deadline(run, timeout, name=f"qrmi-{op}", on_late=on_late)
        except DeadlineExceeded as exc:
            with self._lock:
                if not ended[0]:
                    self._stuck[key] = time.monotonic()
            VENDOR_ERRORS.labels(name, op, "timeout").inc()
            ABANDONED_CALLS.set(abandoned_calls())
            raise errors.QpuTimeoutError(name, op, str(exc)) from None
        except Exception as exc:
            mapped = _map_error(name, op, exc)
            VENDOR_ERRORS.labels(name, op, mapped.kind).inc()
            if checkin and pooled and holder:
                self._checkin(holder[0])
            raise mapped from None
        finally:
            VENDOR_CALL_SECONDS.labels(self.backend.spec.type.value, op).observe(
                time.perf_counter() - start
            )
        if checkin and token is None and holder:
            self._checkin(holder[0])
        return out

    def _refuse_if_stuck(self, op: str) -> None:
        with self._lock:
            stuck = len(self._stuck)
            newest = max(self._stuck.values(), default=0.0)
        if stuck >= MAX_STUCK_CALLS and time.monotonic() - newest < STUCK_RETRY_AFTER:
            VENDOR_ERRORS.labels(self.backend.name, op, "timeout").inc()
            raise errors.QpuTimeoutError(
                self.backend.name,
                op,
                f"{stuck} earlier calls to the vendor are still unanswered; no new call "
                "until one of them returns",
                in_flight=False,
            )

    @property
    def stuck_calls(self) -> int:
        """Calls that missed their deadline and are still waiting for the vendor."""
        with self._lock:
            return len(self._stuck)

    # -- lifecycle ------------------------------------------------------------------------
    def acquire(self, *, on_late: LateAcquire | None = None) -> str:
        """Acquire on an object that holds no session; it stays with the acquisition.

        qrmi keeps the session in the resource object and a second ``acquire()`` on the
        same object returns the *same* session, so an object that acquired is kept aside
        (keyed by token) until its release, never handed to another caller meanwhile.

        An acquire that misses its deadline raises QpuTimeoutError, but the vendor may
        still open the session and answer later. Without ``on_late`` that late token is
        released at once (nobody was given it), so a slow vendor does not leak sessions;
        with it, the caller gets the late token (or the late error) and owns the release.
        """
        holder: list[Any] = []
        name = self.backend.name

        def acquire(r: Any) -> str:
            holder.append(r)
            token: str = r.acquire()
            crash_point("after-acquire")
            return token

        def late(fut: Outcome[str]) -> None:
            exc = fut.exception()
            if exc is not None:
                if on_late is not None:
                    on_late(None, _map_error(name, "acquire", exc))
                return
            token = fut.result()
            if on_late is None:
                self._release_late(holder[0], token)
                return
            self._hold(token, holder[0])
            on_late(token, None)

        token = self._call(
            "acquire", acquire, timeout=self.timeouts.acquire, checkin=False, on_late=late
        )
        self._hold(token, holder[0])
        self._refill()
        # Debug only: the agents log each acquisition at once, with what it is for.
        log.debug("acquired", extra={"backend": name})
        return token

    def _release_late(self, obj: Any, token: str) -> None:
        """Release the session of an acquire that answered after its deadline."""
        name = self.backend.name
        try:
            self._call(
                "release",
                lambda r: r.release(token),
                obj=obj,
                timeout=self.timeouts.release,
                checkin=False,
                capped=False,
            )
        except errors.QpuError as err:
            LATE_ACQUISITIONS.labels(name, "release_failed").inc()
            log.error(
                "an acquire answered after its deadline and its release failed; the vendor "
                "session ends at its own expiry",
                extra={"backend": name, "error": err.message},
            )
            return
        LATE_ACQUISITIONS.labels(name, "released").inc()
        log.warning("an acquire answered after its deadline; released it", extra={"backend": name})

    def release(self, token: str, *, on_late: LateRelease | None = None) -> None:
        """Release ``token``; never sends a second release while an earlier one is unanswered.

        A release that missed its deadline may still reach the vendor; ``on_late`` gets its
        outcome when it comes. A retry (the kubelet retrying NodeUnprepareResources) first
        waits for that earlier call: if it went through, the acquisition is released and
        nothing is sent again; if it failed, a new release is sent; if it is still
        unanswered, the retry times out too.
        """
        if self._earlier_release_done(token):
            log.info("released by an earlier call", extra={"backend": self.backend.name})
            return
        held = self._unhold(token)
        with self._lock:
            done: Future[None] = Future()
            done.set_running_or_notify_cancel()
            self._releasing[token] = (time.monotonic(), done)

        def release(r: Any) -> None:
            try:
                r.release(token)
            except BaseException as exc:
                done.set_exception(exc)
                raise
            done.set_result(None)
            crash_point("after-release")

        def late(fut: Outcome[None]) -> None:
            if on_late is not None:
                exc = fut.exception()
                on_late(None if exc is None else _map_error(self.backend.name, "release", exc))

        try:
            self._call("release", release, obj=held, timeout=self.timeouts.release, on_late=late)
        except errors.QpuTimeoutError:
            raise  # still in flight: the next release() of this token waits for it
        except errors.QpuError:
            with self._lock:
                self._releasing.pop(token, None)
            if held is not None:
                self._hold(token, held)
            raise
        with self._lock:
            self._releasing.pop(token, None)
        log.info("released", extra={"backend": self.backend.name})

    def _earlier_release_done(self, token: str) -> bool:
        """Wait (up to the deadline) for a timed-out release of ``token``; True if it worked."""
        with self._lock:
            now = time.monotonic()
            for key, (since, fut) in list(self._releasing.items()):
                if fut.done() and now - since > _FORGET_RELEASES_AFTER:
                    del self._releasing[key]
            earlier = self._releasing.get(token)
        if earlier is None:
            return False
        try:
            earlier[1].result(timeout=self.timeouts.release)
        except FutureTimeout:
            raise errors.QpuTimeoutError(
                self.backend.name,
                "release",
                f"an earlier release of this acquisition is still unanswered after "
                f"{time.monotonic() - earlier[0]:.0f}s; not sending another",
                in_flight=False,
            ) from None
        except Exception:  # the earlier attempt failed: send a new one
            with self._lock:
                self._releasing.pop(token, None)
            return False
        with self._lock:
            self._releasing.pop(token, None)
        return True

    def health(self) -> Health:
        """Probe the backend; never raises: failures are an unhealthy answer with a reason."""
        try:
            st = self._call("status", lambda r: r.status(), timeout=self.timeouts.probe)
        except errors.QpuTimeoutError as exc:
            return Health(False, "timeout", exc.message)
        except errors.QpuAuthError as exc:
            return Health(False, "auth", exc.message)
        except errors.QpuError as exc:
            return Health(
                False, "unreachable" if exc.kind == "unavailable" else "error", exc.message
            )
        code = str(st.status).rsplit(".", 1)[-1].lower()
        reason = redact(st.status_reason or "")
        return Health(code == "online", code, reason, st.pending_job_count)

    def target(self) -> dict[str, Any]:
        raw = self._call("target", lambda r: r.target().value, timeout=self.timeouts.probe)
        try:
            value = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return {"raw": raw}
        return value if isinstance(value, dict) else {"value": value}

    def metadata(self) -> dict[str, str]:
        md: dict[str, str] = self._call(
            "metadata", lambda r: dict(r.metadata()), timeout=self.timeouts.probe
        )
        return md

    def task_start(self, payload: Any, token: str | None = None) -> str:
        task_id: str = self._call(
            "task_start", lambda r: r.task_start(payload), token=token, timeout=self.timeouts.task
        )
        return task_id

    def task_status(self, task_id: str, token: str | None = None) -> TaskState:
        st = self._call(
            "task_status", lambda r: r.task_status(task_id), token=token, timeout=self.timeouts.task
        )
        return TaskState(str(st).rsplit(".", 1)[-1])

    def task_result(self, task_id: str, token: str | None = None) -> str:
        value: str = self._call(
            "task_result",
            lambda r: r.task_result(task_id).value,
            token=token,
            timeout=self.timeouts.task,
        )
        return value

    def task_stop(self, task_id: str, token: str | None = None) -> None:
        self._call(
            "task_stop", lambda r: r.task_stop(task_id), token=token, timeout=self.timeouts.task
        )


# Builds the client of one backend from its spec and resolved credentials. Agents take one
# so tests can give them doubles; the real one is :func:`qrmi_client_factory`.
ClientFactory = Callable[[QuantumBackend, Mapping[str, str]], QuantumResourceClient]


def qrmi_client_factory(timeouts: CallTimeouts) -> ClientFactory:
    """A factory of :class:`QrmiClient` whose calls run under ``timeouts``."""

    def make(backend: QuantumBackend, creds: Mapping[str, str]) -> QuantumResourceClient:
        return QrmiClient(backend, creds, timeouts=timeouts)

    return make
