"""Where a call's own time goes: a cProfile of the handler, run in the same benchmark.

A benchmark that misses a target prints this under its table, so the report says why: the
handler (the servicer method the gRPC server calls) runs in the benchmark's thread under
the profiler, with whatever the benchmark does between two calls (a release, an
unprepare) left unprofiled. Shares are of the profiled time, which the profiler inflates
for Python code more than for system calls; they rank, they do not time.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import table


@dataclass(frozen=True)
class Hot:
    function: str
    share: float  # of the profiled own time
    per_call: float  # calls of it per handler call


def profile_calls(
    call: Callable[[], object], between: Callable[[], object] | None, n: int
) -> list[Hot]:
    """Functions by own time over ``n`` calls of ``call``, ``between`` after each."""
    prof = cProfile.Profile()
    for _ in range(n):
        prof.enable()
        call()
        prof.disable()
        if between is not None:
            between()
    raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    out = [
        Hot(_name(file, line, func), own / total, ncalls / n)
        for (file, line, func), (_, ncalls, own, _, _) in raw.items()
    ]
    return sorted(out, key=lambda h: -h.share)


def _name(file: str, line: int, func: str) -> str:
    if file == "~":
        return func.strip("<>").replace("built-in method ", "")
    return f"{'/'.join(Path(file).parts[-2:])}:{func}"


# What each share of a handler's own time is spent on, by where the code lives (first
# match wins; the last area takes the rest).
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("the sync to disk", ("fdatasync", "posix.fsync")),
    ("logging", ("logging/", "core/logs.py", "core/credentials.py")),
    ("metrics", ("prometheus_client/",)),
    ("records (pydantic models)", ("pydantic", "/state.py")),
    ("journal: transaction, JSON, checksum, append", (
        "core/journal.py", "json/", "crc32", "posix.write", "flock", "posix.stat",
        "posix.fstat", "contextlib.py",
    )),
    ("env contract, CDI spec, paths", (
        "envcontract.py", "dra/cdi.py", "posix.open", "posix.replace", "posix.fchmod",
        "posix.close", "pathlib.py",
    )),
    ("the call's own logic", ()),
]  # fmt: skip


def by_area(rows: list[Hot]) -> list[tuple[str, float]]:
    """The rows' shares summed per :data:`AREAS` entry, largest first."""
    sums = dict.fromkeys((a for a, _ in AREAS), 0.0)
    for h in rows:
        area = next(a for a, marks in AREAS if not marks or any(m in h.function for m in marks))
        sums[area] += h.share
    return sorted(sums.items(), key=lambda kv: -kv[1])


def hot_table(rows: list[Hot], top: int = 8) -> str:
    """The areas, then the heaviest functions."""
    areas = table(
        ["own time spent on", "share"], [(a, f"{v * 100:.0f} %") for a, v in by_area(rows)]
    )
    functions = table(
        ["heaviest functions", "share", "calls per call"],
        [(h.function, f"{h.share * 100:.0f} %", f"{h.per_call:g}") for h in rows[:top]],
    )
    return f"{areas}\n\n{functions}"


def hot_note(rows: list[Hot]) -> str:
    """Where the handler's own time goes, in one line for a target's note."""
    return "profile: " + ", ".join(f"{a} {v * 100:.0f} %" for a, v in by_area(rows) if v >= 0.03)
