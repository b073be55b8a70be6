"""Test-only crash points: make an agent SIGKILL itself at a named point of its work.

Why: the crash windows that decide whether an acquisition leaks (the vendor has answered,
our checkpoint does not know yet) are microseconds wide. A fault test has to hit them
every time, with a real process and a real SIGKILL rather than a mock, so the code marks
them with :func:`crash_point` and the test starts the agent with::

    QPU_K8S_FAULT_KILL_AT=after-acquire            # the first time the point is reached
    QPU_K8S_FAULT_KILL_AT=after-acquire@2          # the second time

The variable is read once, at import. Unset (always, outside tests) a crash point costs
one lookup in an empty set. Points in the code:

* ``after-acquire``: qrmi's acquire returned a token; nothing has recorded it yet.
* ``after-acquire-recorded``: the token is in the agent's checkpoint; the kubelet has not
  had the answer (Allocate / NodePrepareResources) yet.
* ``after-release``: the vendor confirmed a release; the checkpoint does not say so yet.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "QPU_K8S_FAULT_KILL_AT"


def _parse(text: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in text.split(","):
        name, _, nth = item.strip().partition("@")
        if name:
            points[name] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return points


_POINTS = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}
_LOCK = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL this process if ``QPU_K8S_FAULT_KILL_AT`` names this point (tests only)."""
    if name not in _POINTS:
        return
    with _LOCK:
        _HITS[name] = _HITS.get(name, 0) + 1
        if _HITS[name] != _POINTS[name]:
            return
        # A marker the test can read in the process's output; nothing else runs after it.
        sys.stderr.write(f'{{"msg": "fault injection: SIGKILL at {name}"}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
