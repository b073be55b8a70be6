"""Paying the releases an agent owes to vendors: both node agents, one mechanism.

A release is owed from the moment the agent decides to give a session back (the pod is
gone, an Allocate or a prepare rolled back, a claim from before a reboot) until the
vendor confirms it, says it no longer knows the session, or the session's own time to
live has certainly ended. The agent's durable state (the device plugin's ledger, the DRA
driver's store) keeps each debt, so a debt survives restarts; a :class:`ReleaseRunner`
pays them:

* one attempt per debt at a time; the record is re-read before each attempt, so nothing
  is released twice;
* a failed attempt is recorded with the error and retried after an exponential backoff
  (:class:`Backoff`); a vendor that is down for an hour costs a handful of attempts;
* an attempt that misses its deadline stays "in flight" until the vendor answers (the
  client's late handler records that answer), so no retry can overlap it;
* a backend that is not configured any more is retried until it is (its config must come
  back for its sessions to be released).

The book (:class:`DebtBook`) is the agent's state; the runner knows no storage format.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Histogram

from qpu_k8s.core import errors
from qpu_k8s.core.credentials import redact
from qpu_k8s.core.metrics import LATENCY_BUCKETS
from qpu_k8s.core.qrmi_client import QuantumResourceClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` failures: base * 2**(n-1), capped."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2.0 ** max(0, failures - 1)))


@dataclass(frozen=True)
class Debt:
    """One release owed: which session, where, and until when the vendor holds it anyway."""

    id: str
    backend: str
    token: str
    reason: str = ""
    # Wall-clock time after which the vendor has certainly closed the session itself.
    expires_at: float | None = None


class DebtBook(Protocol):
    """The agent's durable record of what it owes (device plugin ledger, DRA store)."""

    def due_releases(self, now: float) -> list[Debt]: ...
    def next_release_due(self) -> float | None: ...
    def owes(self, debt_id: str) -> bool: ...
    def release_succeeded(self, debt_id: str, now: float) -> None: ...
    def release_failed(self, debt_id: str, error: str, now: float) -> float: ...


@dataclass(frozen=True)
class ReleaseMetrics:
    attempts: Counter
    seconds: Histogram

    @classmethod
    def create(cls, prefix: str, agent: str) -> ReleaseMetrics:
        return cls(
            Counter(
                prefix + "releases_total",
                f"Release attempts of the {agent}, by backend and result (ok, expired, or the "
                "error kind).",
                ["backend", "result"],
            ),
            Histogram(
                prefix + "release_duration_seconds",
                f"Duration of the {agent}'s QRMI release calls, by backend.",
                ["backend"],
                buckets=LATENCY_BUCKETS,
            ),
        )


ClientFor = Callable[[Debt], QuantumResourceClient | None]


class ReleaseRunner:
    """Pays the debts of one book in the background (see the module docstring)."""

    def __init__(
        self,
        book: DebtBook,
        client_for: ClientFor,
        metrics: ReleaseMetrics,
        *,
        workers: int = 4,
        on_released: Callable[[Debt], None] | None = None,
    ) -> None:
        self.book = book
        self.client_for = client_for
        self.metrics = metrics
        self.on_released = on_released
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="release")
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._running: set[Future[bool]] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="releases", daemon=True)
        self._thread.start()

    def stop(self, drain: float = 5.0) -> None:
        """Stop paying; attempts talking to the vendor get ``drain`` seconds to finish, so
        their outcome is recorded rather than repeated after the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            running = list(self._running)
        wait(running, timeout=drain)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poke(self) -> None:
        """Look for due debts now (a new one was recorded)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for debt in self.book.due_releases(time.time()):
                    if self._stop.is_set():
                        break
                    self._submit(debt)
            except Exception:
                log.exception("release pass failed")
            due = self.book.next_release_due()
            timeout = 5.0 if due is None else max(0.05, min(5.0, due - time.time()))
            self._wake.wait(timeout)
            self._wake.clear()

    def _submit(self, debt: Debt) -> None:
        with self._lock:
            if debt.id in self._inflight:
                return
        fut = self._pool.submit(self.pay, debt)
        with self._lock:
            self._running.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[bool]) -> None:
        with self._lock:
            self._running.discard(fut)

    # -- one attempt -------------------------------------------------------------------------
    def pay(self, debt: Debt) -> bool:
        """One release attempt now (also called inline, e.g. by a rollback); True if paid."""
        with self._lock:
            if debt.id in self._inflight:
                return False
            self._inflight.add(debt.id)
        deferred = False
        try:
            if not self.book.owes(debt.id):
                return True
            paid, deferred = self._attempt(debt)
            return paid
        except Exception:
            log.exception("release attempt crashed", extra={"debt": debt.id})
            return False
        finally:
            if not deferred:
                with self._lock:
                    self._inflight.discard(debt.id)

    def _attempt(self, debt: Debt) -> tuple[bool, bool]:
        """Returns (paid, still in flight at the vendor)."""
        now = time.time()
        if debt.expires_at is not None and now >= debt.expires_at:
            self.metrics.attempts.labels(debt.backend, "expired").inc()
            self.book.release_succeeded(debt.id, now)
            log.info(
                "release not needed: the session's time to live has ended at the vendor",
                extra={"debt": debt.id, "backend": debt.backend},
            )
            self._released(debt)
            return True, False
        client = self.client_for(debt)
        if client is None:
            self.metrics.attempts.labels(debt.backend, "no_backend").inc()
            delay = self.book.release_failed(
                debt.id,
                f"backend {debt.backend!r} is not configured on this node; retrying until it is",
                now,
            )
            log.warning(
                "cannot release: backend not configured",
                extra={"debt": debt.id, "backend": debt.backend, "retry_in": delay},
            )
            return False, False
        start = time.perf_counter()
        try:
            client.release(debt.token, on_late=lambda err: self._late(debt, err, start))
        except errors.QpuTimeoutError as err:
            if err.in_flight:
                log.warning(
                    "release is taking long; its answer will be recorded when it comes",
                    extra={"debt": debt.id, "backend": debt.backend},
                )
                return False, True
            return self._record(debt, err, start), False
        except Exception as exc:
            return self._record(debt, exc, start), False
        return self._record(debt, None, start), False

    def _late(self, debt: Debt, err: BaseException | None, start: float) -> None:
        """A release that missed its deadline answered: record it, let retries through."""
        try:
            self._record(debt, err, start)
        finally:
            with self._lock:
                self._inflight.discard(debt.id)
            self._wake.set()

    def _record(self, debt: Debt, exc: BaseException | None, start: float) -> bool:
        self.metrics.seconds.labels(debt.backend).observe(time.perf_counter() - start)
        if isinstance(exc, errors.QpuNotFoundError):
            # The vendor no longer knows the session (expired or closed): nothing is held.
            log.info(
                "release: vendor has no such acquisition; treating as released",
                extra={"debt": debt.id, "backend": debt.backend, "error": exc.message},
            )
        elif exc is not None:
            err = (
                exc
                if isinstance(exc, errors.QpuError)
                else errors.QpuUnavailableError(
                    debt.backend, "release", redact(str(exc)) or type(exc).__name__
                )
            )
            self.metrics.attempts.labels(debt.backend, err.kind).inc()
            delay = self.book.release_failed(debt.id, f"[{err.kind}] {err.message}", time.time())
            log.warning(
                "release failed; will retry",
                extra={
                    "debt": debt.id,
                    "backend": debt.backend,
                    "kind": err.kind,
                    "error": err.message,
                    "retry_in": delay,
                },
            )
            return False
        self.metrics.attempts.labels(debt.backend, "ok").inc()
        self.book.release_succeeded(debt.id, time.time())
        log.info(
            "released", extra={"debt": debt.id, "backend": debt.backend, "reason": debt.reason}
        )
        self._released(debt)
        return True

    def _released(self, debt: Debt) -> None:
        if self.on_released is not None:
            self.on_released(debt)
