"""The probe schedule of every backend: one heap of due times and one task, not a timer
per object, with bounded concurrency (1000 backends cost one task and a heap).

A backend is probed when its due time comes (``spec.probeIntervalSeconds`` after its last
probe started); a probe never runs twice at once for one backend, and a backend scheduled
again while its probe runs is probed right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable

from qpu_k8s.operator import metrics as m


async def wait_for_event(event: asyncio.Event, seconds: float | None) -> None:
    """Wait for ``event`` at most ``seconds``.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives just as
    the event fires, and the operator could then never stop.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def clock() -> float:
    return time.monotonic()


class ProbeScheduler:
    """Runs ``probe(name)`` for each backend when it is due (see the module docstring)."""

    def __init__(self, probe: Callable[[str], Awaitable[None]], concurrency: int) -> None:
        self._probe = probe
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._seq = 0
        # Loop-independent until first used (3.10+): safe to make before the loop runs.
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(concurrency)

    def schedule(self, name: str, due: float) -> None:
        """Make ``due`` (a :func:`clock` time) the backend's next probe."""
        self._due[name] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, name))
        self._wake.set()

    def forget(self, name: str) -> None:
        self._due.pop(name, None)

    def running(self, name: str) -> bool:
        return name in self._running

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self) -> None:
        """The scheduler task (runs until cancelled)."""
        while True:
            now = clock()
            while self._heap and self._heap[0][0] <= now:
                due, _, name = heapq.heappop(self._heap)
                if self._due.get(name) != due or name in self._running:
                    continue  # superseded, or running (it is rescheduled after)
                m.PROBE_LAG.set(max(0.0, now - due))
                self._running.add(name)
                asyncio.get_running_loop().create_task(self._one(name))
            self._wake.clear()
            timeout = (self._heap[0][0] - now) if self._heap else None
            await wait_for_event(self._wake, timeout)

    async def _one(self, name: str) -> None:
        try:
            async with self._sem:
                m.PROBES_IN_FLIGHT.inc()
                try:
                    await self._probe(name)
                finally:
                    m.PROBES_IN_FLIGHT.dec()
        finally:
            self._running.discard(name)
