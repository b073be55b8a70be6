"""The workers' fork server: ``python -m qpu_k8s.emulator.forkserver <control fd>``.

A separate, single-purpose process that imports the simulators once (``preload.py``) and
then forks one child per job on request. It exists instead of ``multiprocessing``'s fork
server because that one makes every child re-import the parent's ``__main__``, which runs a
user's unguarded script again inside each worker.

Protocol over the control socket (a ``socketpair`` end inherited from the emulator):

* on start, after the preload, the server sends ``b"R"``;
* a request is an 8-byte big-endian length sent with one file descriptor (``SCM_RIGHTS``,
  the write end of the job's result pipe), then that many bytes: a pickled
  ``(function, args)``;
* the server forks, answers the child's pid as 8 bytes, and goes back to reading;
* the child writes one pickled message to the result pipe and exits:
  ``("ok", value, peak_rss)`` or ``("error", type_name, message, input_error, peak_rss)``.

The server exits when the control socket closes (the emulator is gone); its children ask
the kernel to SIGKILL them when it does (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import resource
import signal
import socket
import sys
from typing import Any

HEADER = 8
_PR_SET_PDEATHSIG = 1
# Jobs run at a lower CPU priority than the emulator's server: on a small machine a
# simulation that saturates every core must still let the APIs answer at once.
WORKER_NICENESS = 10


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``, or fewer only at end of stream."""
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the fork server exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(1)


def _child(sock: socket.socket, result_fd: int, payload: bytes, parent: int) -> None:
    """In the forked child: run the job, write its one message, exit without cleanup."""
    code = 0
    try:
        sock.close()
        _die_with_parent(parent)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the emulator's
        from .workers import InputError

        message: tuple[Any, ...]
        try:
            fn, args = pickle.loads(payload)  # noqa: S301 - from our own parent only
            value = fn(*args)
        except BaseException as exc:
            message = ("error", type(exc).__name__, str(exc), isinstance(exc, InputError))
        else:
            message = ("ok", value)
        try:
            data = pickle.dumps((*message, _peak_rss()))
        except Exception as exc:
            data = pickle.dumps(("error", type(exc).__name__, str(exc), False, _peak_rss()))
        with os.fdopen(result_fd, "wb") as out:
            out.write(data)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def serve(sock: socket.socket) -> None:
    """Fork a child per request until the control socket closes."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished children
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the emulator decides when we stop
    me = os.getpid()
    sock.sendall(b"R")
    while True:
        try:
            header, fds, _flags, _addr = socket.recv_fds(sock, HEADER, 1)
        except OSError:
            return
        if not header or not fds:  # the emulator closed the socket (or broke the protocol)
            return
        if len(header) < HEADER:
            header += recv_exact(sock, HEADER - len(header))
        payload = recv_exact(sock, int.from_bytes(header, "big"))
        pid = os.fork()
        if pid == 0:
            _child(sock, fds[0], payload, me)
        os.close(fds[0])
        sock.sendall(pid.to_bytes(HEADER, "big"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    # The whole server at the workers' priority, preload included: seconds of imports at
    # start-up must not slow the emulator's APIs down either (its jobs inherit it).
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    try:
        from . import preload  # noqa: F401 - imports the simulators, warms the caches
    except Exception as exc:  # the jobs will report what is missing
        print(f"qpu-k8s emulator fork server: preload failed: {exc}", file=sys.stderr)
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
