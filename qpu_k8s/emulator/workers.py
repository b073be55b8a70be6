"""Simulations run in worker processes, one per job, forked from a pre-loaded fork server.

Why processes: qiskit-aer and qutip hold the GIL for minutes inside C++ code, so a worker
*thread* froze the HTTP and admin APIs and made SIGTERM wait for the simulation. A process
can be killed at any moment, which is what cancel, the job time limit and shutdown need.

Why a fork server (``forkserver.py``): importing qiskit, qiskit-aer, qiskit-ibm-runtime and
pulser in a fresh interpreter takes seconds. The fork server is started once per emulator
process (in the background when the emulator starts), imports them and the catalogue's
calibration data, and then forks a child per job: a warm start in tens of milliseconds,
nothing shared between jobs, and no fork of the emulator's own threads. A fresh process
per job, rather than a pool of long-lived ones, keeps the simulators' memory from
accumulating and makes killing the job the whole story of cancelling it.

Orphans: a job process is killed when its job is cancelled, times out or the emulator
stops; the fork server exits when the emulator's process does (its control socket closes),
and its children ask the kernel to SIGKILL them when it does, so even ``kill -9`` of the
emulator leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from .forkserver import HEADER, recv_exact

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The job's input cannot run here; raised inside a worker, reported to the client."""


class WorkerError(RuntimeError):
    """The work raised in the worker process; carries the original type name and message."""

    def __init__(
        self, type_name: str, message: str, input_error: bool, peak_rss_bytes: int | None = None
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.input_error = input_error
        self.peak_rss_bytes = peak_rss_bytes

    def __str__(self) -> str:
        message = str(self.args[0])
        return message if self.input_error else f"{self.type_name}: {message}"


class WorkerCrashed(RuntimeError):
    """The worker process died without an answer (killed, out of memory, segfault)."""


class Outcome:
    """What a worker returned, with its peak resident memory."""

    __slots__ = ("peak_rss_bytes", "value")

    def __init__(self, value: Any, peak_rss_bytes: int) -> None:
        self.value = value
        self.peak_rss_bytes = peak_rss_bytes


class ForkServer:
    """The emulator process's one fork server; started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one request at a time on the control socket
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self.ready = threading.Event()

    def ensure_running(self) -> socket.socket:
        """Start the server if needed and wait until it has preloaded; returns the socket."""
        with self._lock:
            sock = self._ensure_started()
        self._wait_ready()
        return sock

    def _ensure_started(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._sock is not None:
            return self._sock
        if self._sock is not None:
            self._sock.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        # The parent's import path, so the server finds the same qpu_k8s and simulators.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.ready = threading.Event()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "qpu_k8s.emulator.forkserver", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's ^C goes to the emulator, which decides
        )
        theirs.close()
        self._sock = ours
        threading.Thread(
            target=self._await_ready,
            args=(ours, self.ready),
            name="emulator-forkserver-ready",
            daemon=True,
        ).start()
        return ours

    @staticmethod
    def _await_ready(sock: socket.socket, ready: threading.Event) -> None:
        """Consume the server's b"R" (sent after its preload); no request is sent before."""
        with contextlib.suppress(OSError):
            sock.recv(1)
        ready.set()

    def _wait_ready(self) -> None:
        self.ready.wait()
        if self._proc is not None and self._proc.poll() is not None:
            raise WorkerCrashed(
                f"the worker fork server exited during start-up (exit code {self._proc.returncode})"
            )

    def fork(self, fn: Callable[..., Any], args: tuple[Any, ...], result_w: int) -> int:
        """Ask the server for a child running ``fn(*args)``; returns its pid."""
        payload = pickle.dumps((fn, args))
        sock = self.ensure_running()
        with self._lock:
            if self._sock is not sock:
                raise WorkerCrashed("the worker fork server restarted; submit the job again")
            socket.send_fds(sock, [len(payload).to_bytes(HEADER, "big")], [result_w])
            sock.sendall(payload)
            answer = recv_exact(sock, HEADER)
        if len(answer) < HEADER:
            raise WorkerCrashed("the worker fork server exited")
        return int.from_bytes(answer, "big")

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None


_SERVER = ForkServer()


def fork_server() -> ForkServer:
    """The process-wide fork server (shared by every emulator in this process)."""
    return _SERVER


class _Run:
    """One job process, driven from a daemon thread that blocks on its result pipe."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[_Run], None],
    ) -> None:
        self._fn = fn
        self._args = args
        self._loop = loop
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._killed = False
        self._finished = False
        self.pid: int | None = None
        self.future: asyncio.Future[Outcome] = loop.create_future()

    def start(self) -> None:
        threading.Thread(target=self._main, name="emulator-job-waiter", daemon=True).start()

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            pid = None if self._finished else self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _deliver(self, ok: bool, value: Any) -> None:
        def set_it() -> None:
            if self.future.done():
                return
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)

        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self._loop.call_soon_threadsafe(set_it)

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self._deliver(False, WorkerCrashed(f"worker failed: {exc}"))
        finally:
            self._on_exit(self)

    def _run(self) -> None:
        result_r, result_w = os.pipe()
        try:
            pid = fork_server().fork(self._fn, self._args, result_w)
        except Exception:
            os.close(result_r)
            raise
        finally:
            os.close(result_w)  # the child holds the only write end: its death is our EOF
        with self._lock:
            self.pid = pid
            killed = self._killed
        if killed:
            self.kill()
        with os.fdopen(result_r, "rb") as pipe:
            data = pipe.read()
        with self._lock:
            self._finished = True  # its pid may be reused from now on: never signal it again
        if not data:
            self._deliver(False, WorkerCrashed("the worker process ended without a result"))
            return
        message = pickle.loads(data)  # noqa: S301 - from our own worker
        if message[0] == "ok":
            self._deliver(True, Outcome(message[1], message[2]))
        else:
            _, type_name, text, input_error, rss = message
            self._deliver(False, WorkerError(type_name, text, input_error, rss))


class WorkerPool:
    """Runs functions in fresh processes forked from the pre-loaded fork server."""

    def __init__(self) -> None:
        self._runs: set[_Run] = set()
        self._lock = threading.Lock()

    @property
    def ready(self) -> threading.Event:
        """Set once the fork server has imported the simulators."""
        return fork_server().ready

    def warm_up(self) -> None:
        """Start the fork server now, in the background, so the first job does not wait."""

        def boot() -> None:
            try:
                fork_server().ensure_running()
            except Exception:
                log.exception("the emulator's worker fork server did not start")

        threading.Thread(target=boot, name="emulator-forkserver-boot", daemon=True).start()

    async def call(self, fn: Callable[..., Any], *args: Any, limit: float | None) -> Outcome:
        """Run ``fn(*args)`` in a new process; kill it on cancellation or after ``limit`` s.

        Raises ``TimeoutError`` (process killed), ``WorkerError`` (the function raised) or
        ``WorkerCrashed``. ``fn`` must be a module-level function and ``args`` picklable.
        """
        run = _Run(fn, args, asyncio.get_running_loop(), self._forget)
        # After a kill nobody awaits the future: retrieve its error so asyncio does not log it.
        run.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        with self._lock:
            self._runs.add(run)
        run.start()
        try:
            async with asyncio.timeout(limit):
                return await asyncio.shield(run.future)
        finally:
            if not run.future.done():
                run.kill()

    def _forget(self, run: _Run) -> None:
        with self._lock:
            self._runs.discard(run)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._runs)

    def pids(self) -> list[int]:
        """Process ids of the live job processes (for diagnostics and tests)."""
        with self._lock:
            return [r.pid for r in self._runs if r.pid is not None]

    def kill_all(self) -> None:
        """Kill every job process now (shutdown); their waiters report a crash."""
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            run.kill()
