"""What a benchmark prints: markdown tables, and its targets marked met or missed.

Each benchmark prints markdown (``python -m benchmarks`` pastes it into
``docs/benchmarks.md``) and reports every target it measures through :func:`targets`, which
also appends them to the file named by ``$QPU_K8S_BENCH_TARGETS`` (JSON lines): the runner
collects them into the summary at the top of the report.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.measure import load_average

TARGETS_ENV = "QPU_K8S_BENCH_TARGETS"


@dataclass(frozen=True)
class Target:
    """One target of issue 16 as measured in this run."""

    name: str
    # Empty: not measured in this run (``note`` says why).
    measured: str
    limit: str
    # None: no limit to meet (the number is reported), or not measured.
    met: bool | None
    # For a miss: what the profile shows; otherwise anything the reader needs.
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "reported" if self.measured else "not measured"
        return "met" if self.met else "**missed**"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def heading(title: str) -> None:
    """The benchmark's first lines: what ran, on what, under which load."""
    print(f"{title} ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, ", end="")
    print(f"load average 1/5/15 min at start: {load_average()})\n")


def targets(items: Sequence[Target]) -> None:
    """Print the targets as a table and hand them to the runner."""
    print(f"\nLoad average at the end: {load_average()}.\n")
    print(
        table(
            ["target", "measured", "limit", "verdict", "note"],
            [(t.name, t.measured, t.limit, t.verdict, t.note) for t in items],
        )
    )
    out = os.environ.get(TARGETS_ENV)
    if out:
        with Path(out).open("a", encoding="utf-8") as f:
            for t in items:
                f.write(json.dumps(asdict(t)) + "\n")


# Issue 16's targets for a node agent's call against its durability floor.
FLOOR_RATIO_LIMIT = 1.5
FLAT_LIMIT = 1.10


def floor_targets(
    call: str, ratios: Sequence[float], growth_from: str, growth_to: str, miss_note: str
) -> list[Target]:
    """The two floor targets of an agent's call measured at growing counts: its worst ratio
    to the floor (``miss_note`` says why when missed), and how much the ratio grows from the
    first count (``growth_from``) to the last (``growth_to``)."""
    worst = max(ratios)
    growth = ratios[-1] / ratios[0]
    return [
        Target(
            f"{call} (vendor excluded) vs durability floor",
            f"{worst:.2f}x (worst row)",
            f"<= {FLOOR_RATIO_LIMIT}x",
            worst <= FLOOR_RATIO_LIMIT,
            "" if worst <= FLOOR_RATIO_LIMIT else miss_note,
        ),
        Target(
            f"{call} flat from {growth_from} to {growth_to}",
            f"{(growth - 1) * 100:+.1f}% (ratio {ratios[0]:.2f}x -> {ratios[-1]:.2f}x)",
            f"within {(FLAT_LIMIT - 1) * 100:.0f}%",
            growth <= FLAT_LIMIT,
        ),
    ]


def read_targets(path: Path) -> list[Target]:
    if not path.exists():
        return []
    return [Target(**json.loads(line)) for line in path.read_text().splitlines() if line]
