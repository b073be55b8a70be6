"""Deriving cluster-wide state from a fresh listing of the QuantumBackends: the node agents'
ConfigMap and the shared ResourceClaims.

Debounced (a burst of changes costs one pass) and every ``resync`` seconds. Deriving from
a listing, not from memory, means a restart can never publish a partial config. Callers
that must know their change is out (a deletion waiting to drop its backend from the
ConfigMap) take a ticket and wait for a pass that started after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from qpu_k8s.operator import metrics as m
from qpu_k8s.operator.kube import ApiStatusError
from qpu_k8s.operator.scheduler import wait_for_event

log = logging.getLogger(__name__)


class SyncLoop:
    """Runs ``sync()`` when requested (debounced) and periodically; retries with backoff."""

    def __init__(self, sync: Callable[[], Awaitable[None]], *, debounce: float, resync: float):
        self._sync = sync
        self.debounce = debounce
        self.resync = resync
        self.last_error: str | None = None
        self.passes = 0
        self.last_seconds = 0.0  # how long the last successful pass took
        self._requested = 0
        self._done = 0
        # Loop-independent until first used (3.10+): safe to make before the loop runs.
        self._event = asyncio.Event()
        self._cond = asyncio.Condition()

    def request(self) -> int:
        """Ask for a pass; returns a ticket for :meth:`wait`."""
        self._requested += 1
        self._event.set()
        return self._requested

    async def wait(self, ticket: int, within: float) -> bool:
        """Wait until a pass that started after ``ticket`` was requested has finished."""
        cond = self._cond
        try:
            async with asyncio.timeout(within), cond:
                await cond.wait_for(lambda: self._done >= ticket)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """The sync task (runs until cancelled)."""
        self._event.set()
        backoff = 1.0
        while True:
            await wait_for_event(self._event, self.resync)
            self._event.clear()
            # Coalesce a burst of changes. A pass lists and renders every backend (with 1000,
            # a few tenths of a second of the event loop), so the pause is at least twice
            # the last pass: a long burst of creations costs a third of the loop, not all.
            await asyncio.sleep(max(self.debounce, 2 * self.last_seconds))
            ticket = self._requested
            started = time.perf_counter()
            try:
                await self._sync()
            except ApiStatusError as err:
                m.API_ERRORS.labels("sync").inc()
                self.last_error = str(err)
                log.warning("sync failed, retrying", extra={"error": str(err)})
                # Back off, but a new request (a deletion waiting on us) retries at once.
                await wait_for_event(self._event, backoff)
                backoff = min(backoff * 2, 30.0)
                self._event.set()
                continue
            self.last_seconds = time.perf_counter() - started
            backoff = 1.0
            self.last_error = None
            self.passes += 1
            async with self._cond:
                self._done = max(self._done, ticket)
                self._cond.notify_all()
