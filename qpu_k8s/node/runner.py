"""Running a node agent as a process: start, serve until SIGTERM/SIGINT, stop.

Both kubelet plugins' commands end the same way: a signal stops serving and exits 0,
leaving what running pods hold in the checkpoint for the next instance. An agent that
cannot start (another instance holds the state directory) exits 1 with the reason.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Protocol


class NodeAgent(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def run_until_signalled(agent: NodeAgent, name: str) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
    except RuntimeError as err:
        print(f"qpu-k8s {name}: {err}", file=sys.stderr)
        agent.stop()
        return 1
    try:
        stop.wait()
    finally:
        agent.stop()
    return 0
