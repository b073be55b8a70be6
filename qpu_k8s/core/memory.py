"""Handing freed heap memory back to the system after a burst.

glibc keeps what a burst of work freed: a 133-qubit calibration parsed from ``target()``
(half a megabyte of JSON, some 12 MiB at its peak), the qrmi objects a round of probes
created and dropped. Most of it sits in the arenas of the worker threads, which glibc never
trims by itself, so an agent's resident memory would stay at its highest point for good
(measured in ``benchmarks/memory_bench.py``). ``malloc_trim`` returns it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable


class _Last:
    """When the heap was last trimmed (monotonic seconds)."""

    lock = threading.Lock()
    at = 0.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols of the process itself: glibc's where it runs
    except OSError:
        return None
    fn: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return fn


_MALLOC_TRIM = _find_malloc_trim()


def trim(at_most_every: float = 0.0) -> bool:
    """Return freed heap memory to the system (glibc; elsewhere a no-op); True if it ran.

    It walks the heap (about a millisecond for an agent): call it after a burst, with
    ``at_most_every`` seconds between two calls where bursts can follow each other."""
    if _MALLOC_TRIM is None:
        return False
    with _Last.lock:
        now = time.monotonic()
        if at_most_every and now - _Last.at < at_most_every:
            return False
        _Last.at = now
    _MALLOC_TRIM(0)
    return True
