"""Waiting for what a test can only observe by looking again (files, logs, HTTP, the API).

Where the code under test offers a condition to wait on (the fake kubelet's ``wait_for_*``,
the emulator's ``state.wait_until``), tests use that instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float, what: str = "a condition", step: float = 0.01
) -> T:
    """Call ``check`` every ``step`` seconds until it returns something truthy, and return
    that; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


async def until(pred: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """In a coroutine: wait (yielding to the loop, never sleeping blind) until ``pred()``."""
    end = time.monotonic() + within
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)
