"""How a node agent's process ends: a signal before, during or after its start stops it,
and a start that fails in any way stops what it had started (no process left that no
signal ends). Each case runs the real runner in its own process, with an agent that
holds a non-daemon thread until stopped, as the real agents' servers do."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from testsupport.waiting import wait_for

AGENT = """
import os, signal, sys, threading
from qpu_k8s.node.runner import run_until_signalled

MODE = sys.argv[1]

class Agent:
    def __init__(self):
        self.done = threading.Event()

    def start(self):
        threading.Thread(target=self.done.wait, name="server").start()  # not a daemon
        if MODE == "signal-during-start":
            os.kill(os.getpid(), signal.SIGTERM)
        if MODE == "start-fails":
            raise ValueError("a bug in start")
        if MODE == "cannot-start":
            raise RuntimeError("another instance holds the state directory")
        print("started", flush=True)

    def stop(self):
        self.done.set()
        print("stopped", flush=True)

sys.exit(run_until_signalled(Agent(), "test-agent"))
"""


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:  # a failed test leaves no process behind
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _run(procs: list[subprocess.Popen[str]], mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_serving_stops_the_agent_and_exits_0(
    spawn: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    proc = _run(spawn, "serve")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    proc.send_signal(sig)
    code, out, err = _finish(proc)
    assert (code, out) == (0, "stopped\n"), err


def test_a_signal_during_start_stops_the_agent_once_started(
    spawn: list[subprocess.Popen[str]],
) -> None:
    code, out, err = _finish(_run(spawn, "signal-during-start"))
    assert (code, out) == (0, "started\nstopped\n"), err


def test_a_start_that_fails_stops_what_it_started_and_the_process_ends(
    spawn: list[subprocess.Popen[str]],
) -> None:
    """Before the fix, the traceback ended the main thread but the server thread kept the
    process alive, and SIGTERM only set an event nobody waited on."""
    proc = _run(spawn, "start-fails")
    wait_for(lambda: proc.poll() is not None, 30, "the agent's process to end")
    code, out, err = _finish(proc)
    assert (code, out) == (1, "stopped\n")
    assert "ValueError: a bug in start" in err


def test_an_agent_that_cannot_start_says_why_and_exits_1(
    spawn: list[subprocess.Popen[str]],
) -> None:
    code, out, err = _finish(_run(spawn, "cannot-start"))
    assert (code, out) == (1, "stopped\n")
    assert err == "qpu-k8s test-agent: another instance holds the state directory\n"
