"""A call that never returns costs its caller the deadline, not the process its exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from qpu_k8s.core.deadline import (
    DeadlineExceeded,
    abandoned_calls,
    call_with_deadline,
    in_thread,
)


def test_result_and_exception_pass_through() -> None:
    assert call_with_deadline(lambda: 41 + 1, 1) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 // 0, 1)


def test_timeout_and_abandoned_gauge() -> None:
    release = threading.Event()
    before = abandoned_calls()
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        call_with_deadline(lambda: release.wait(30), 0.2)
    assert time.monotonic() - t0 < 2
    assert abandoned_calls() == before + 1
    release.set()
    deadline = time.monotonic() + 5
    while abandoned_calls() != before and time.monotonic() < deadline:
        release.wait(0.01)
    assert abandoned_calls() == before


def test_in_thread_runs_off_the_loop() -> None:
    """A blocking call awaited from the loop leaves the loop free to run other tasks."""
    release = threading.Event()

    async def main() -> None:
        blocked = asyncio.create_task(in_thread(lambda: release.wait(30)))
        assert await in_thread(lambda: "ok") == "ok"  # not queued behind the blocked one
        assert not blocked.done()
        release.set()
        assert await blocked is True

    asyncio.run(asyncio.wait_for(main(), 10))


def test_stuck_call_does_not_block_interpreter_exit() -> None:
    code = (
        "import threading\n"
        "from qpu_k8s.core.deadline import call_with_deadline, DeadlineExceeded\n"
        "try:\n"
        "    call_with_deadline(lambda: threading.Event().wait(), 0.1)\n"
        "except DeadlineExceeded:\n"
        "    print('timed out')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "timed out"
