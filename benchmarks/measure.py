"""Measuring on a shared, noisy machine: floor and target alternated in rounds.

The machine has two cores and other work comes and goes (a Kubernetes cluster, test runs),
so a floor measured a minute before its target may have run under another load. Every
comparison here alternates the two in short rounds, reversing the order every other round,
and compares medians: a change of load then lands on both sides alike.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# One measured operation: does one call (and any untimed clean-up) and returns the
# seconds the call itself took.
Op = Callable[[], float]


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(
    ops: Mapping[str, Op], *, rounds: int, per_round: int, warmup: int = 0
) -> dict[str, list[list[float]]]:
    """Run every op ``per_round`` times per round, the ops in turn, for ``rounds`` rounds
    (order reversed every other round); ``warmup`` unrecorded calls of each first. Returns
    each op's samples round by round."""
    names = list(ops)
    for name in names:
        for _ in range(warmup):
            ops[name]()
    out: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            op = ops[name]
            out[name].append([op() for _ in range(per_round)])
    return out


@dataclass(frozen=True)
class Compared:
    """A target against its floor, from samples taken round by round, alternately."""

    floor_rounds: list[list[float]]
    target_rounds: list[list[float]]

    @property
    def floor(self) -> list[float]:
        return [x for r in self.floor_rounds for x in r]

    @property
    def target(self) -> list[float]:
        return [x for r in self.target_rounds for x in r]

    @property
    def floor_p50(self) -> float:
        return statistics.median(self.floor)

    @property
    def target_p50(self) -> float:
        return statistics.median(self.target)

    @property
    def ratio(self) -> float:
        """The median over rounds of (target median / floor median) in the same round: a
        load that changes between rounds leaves it alone."""
        return statistics.median(
            statistics.median(t) / statistics.median(f)
            for f, t in zip(self.floor_rounds, self.target_rounds, strict=True)
        )

    @property
    def excess(self) -> float:
        """Seconds the target's median spends above the floor's."""
        return self.target_p50 - self.floor_p50


def compare(floor: Op, target: Op, *, rounds: int, per_round: int, warmup: int = 5) -> Compared:
    samples = interleave(
        {"floor": floor, "target": target}, rounds=rounds, per_round=per_round, warmup=warmup
    )
    return Compared(samples["floor"], samples["target"])


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
