"""Reporting an acquisition whose token was lost: both agents, one way.

The one loss neither agent can prevent: the vendor answered an acquire, and the agent died
before that token was written down (or the answer never came). The session cannot be
released (qrmi cannot list a backend's sessions); it ends at the vendor's own expiry.
So it is reported, as an error log line with the bound on what it costs, as a counter
(``..._acquisitions_lost_total``) and as the time of the last loss (a gauge). The agents
keep that time in their state and export it again at every start (:meth:`seen`), and
serve their metrics before recovery runs: an agent that crash-loops right after finding a
loss still shows it to a scrape every minute, although each new process counts from zero.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossReporter:
    lost: Counter
    last_loss: Gauge
    _last: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, prefix: str, agent: str) -> LossReporter:
        """The metrics of one agent (``prefix``: e.g. ``qpu_k8s_dra_``)."""
        return cls(
            Counter(
                prefix + "acquisitions_lost_total",
                f"Acquires whose token the {agent} lost (it died between the vendor's answer "
                "and its record): the session, if any, can only expire at the vendor.",
                ["backend"],
            ),
            Gauge(
                prefix + "acquisitions_lost_last_timestamp_seconds",
                f"Unix time of the last acquisition the {agent} lost, by backend.",
                ["backend"],
            ),
        )

    def report(
        self, backend: str, held_at_most: int | None, why: str, at: float | None = None, **ids: str
    ) -> float:
        """Count and log one lost acquisition; ``held_at_most``: the vendor's expiry bound,
        ``at``: the time the agent recorded for it. Returns that time, for the agent to keep."""
        at = time.time() if at is None else at
        self.lost.labels(backend).inc()
        self.seen(backend, at)
        log.error(
            f"{why}: token unknown, the vendor session (if any) can only expire on its own",
            extra={
                "backend": backend,
                "held_at_most_seconds": "unknown" if held_at_most is None else str(held_at_most),
                **ids,
            },
        )
        return at

    def seen(self, backend: str, at: float) -> None:
        """A loss known from the agent's state (or just reported): the gauge shows the last."""
        with self._lock:
            if at > self._last.get(backend, 0.0):
                self._last[backend] = at
                self.last_loss.labels(backend).set(at)
