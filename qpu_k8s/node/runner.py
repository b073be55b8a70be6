"""Running a node agent as a process: start, serve until SIGTERM/SIGINT, stop.

Both kubelet plugins' commands end the same way: a signal stops serving and exits 0,
leaving what running pods hold in the checkpoint for the next instance. An agent that
cannot start (another instance holds the state directory) exits 1 with the reason; one
whose start fails in any other way is stopped before the error ends the process, since
the threads it already started would otherwise keep a process alive that no signal ends.

The signal reaches the main thread through :func:`signal.set_wakeup_fd`: the handler
itself does nothing, so it cannot deadlock on a lock the main thread holds at the moment
the signal lands (as ``threading.Event.set`` in a handler can), and a signal that arrives
while the agent is still starting is waiting in the pipe when the start is done.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Protocol

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NodeAgent(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def _noted(signum: int, frame: FrameType | None) -> None:
    """The wakeup fd carries the signal; a Python handler is needed only so the default
    action (terminate without stopping the agent) does not apply."""


def run_until_signalled(agent: NodeAgent, name: str) -> int:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)  # set_wakeup_fd's requirement: a full pipe drops, never blocks
    previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _noted) for s in SIGNALS}
    try:
        try:
            agent.start()
        except RuntimeError as err:
            print(f"qpu-k8s {name}: {err}", file=sys.stderr)
            return 1
        _wait_for_signal(wake_r)
        return 0
    finally:
        agent.stop()  # once, however it ends: signalled, refused, or a failed start
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(wake_r)
        os.close(wake_w)


def _wait_for_signal(fd: int) -> None:
    """Block until a byte of one of :data:`SIGNALS` is in the pipe (others are skipped)."""
    wanted = {int(s) for s in SIGNALS}
    while True:
        for byte in os.read(fd, 64):
            if byte in wanted:
                return
