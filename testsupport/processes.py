"""A node agent as a real child process (``kill -9`` means kill -9), logging JSON lines to a
file the test reads: its log lines, its /metrics, its exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from testsupport import REPO
from testsupport.waiting import wait_for


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total


def terminate_or_kill(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM ``proc`` and return its exit status; a process still running ``timeout``
    seconds later is killed (so a failing test leaves none behind) and the test fails."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(
            f"process {proc.pid} did not exit within {timeout} s of SIGTERM; killed it"
        ) from None


class AgentProcess:
    """The part every agent process shares; a subclass says how to start it.

    Each start is a new log file (``<log_prefix>-<n>.log`` in :meth:`log_dir`), so a
    restarted agent's lines are told apart from its predecessor's.
    """

    what: ClassVar[str]  # for messages: "device plugin", "DRA driver"
    log_prefix: ClassVar[str]
    started_msg: ClassVar[str]  # the log line that carries ``metrics_port``
    log_timeout: ClassVar[float] = 15.0

    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None
    log_path: Path | None

    def log_dir(self) -> Path:
        raise NotImplementedError

    def argv(self, index: int) -> list[str]:
        """The command line of start number ``index`` (0 for the first)."""
        raise NotImplementedError

    def start(self) -> Self:
        index = len(list(self.log_dir().glob(f"{self.log_prefix}-*.log")))
        self.log_path = self.log_dir() / f"{self.log_prefix}-{index}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv(index),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=REPO,
            )
        return self

    # -- logs ----------------------------------------------------------------------------
    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def records(self) -> list[dict[str, Any]]:
        """Every log line, parsed (a line that is not JSON as ``{"msg": line, "unparsed"}``)."""
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"msg": line, "unparsed": True})
        return out

    def wait_log(self, msg: str, timeout: float | None = None, count: int = 1) -> dict[str, Any]:
        """The ``count``-th line whose ``msg`` is ``msg``; fails at once if the process
        exited without logging it."""

        def check() -> dict[str, Any] | None:
            assert self.proc is not None
            hits = [r for r in self.records() if r.get("msg") == msg]
            if len(hits) >= count:
                return hits[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.what} exited ({self.proc.returncode}):\n{self.text()}")
            return None

        wait = self.log_timeout if timeout is None else timeout
        return wait_for(check, wait, f"{self.what} log line {msg!r} #{count}", step=0.02)

    # -- metrics -------------------------------------------------------------------------
    def started(self) -> dict[str, Any]:
        return self.wait_log(self.started_msg)

    @property
    def metrics_port(self) -> int:
        return int(self.started()["metrics_port"])

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_value(self.metrics(), name, labels)

    # -- the end -------------------------------------------------------------------------
    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: int) -> int:
        """Send ``sig`` and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.wait_exit()

    def terminate(self) -> int:
        return self.signal(signal.SIGTERM)

    def kill(self) -> int:
        return self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """Kill it if it still runs (fixture teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
