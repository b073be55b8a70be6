"""Plumbing shared by the fake kubelet parts: unix-socket gRPC servers and condition waits."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc

T = TypeVar("T")

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL on Linux.
MAX_UNIX_PATH = 107
# Interval of the few loops that must poll (directory scans); waits on our own state use
# threading.Condition and wake up at once.
POLL_INTERVAL = 0.01


class KubeletFakeError(RuntimeError):
    """The fake kubelet was used wrongly or a wait timed out."""


def unix_target(path: Path) -> str:
    """gRPC address for a unix socket: ``unix://<absolute path>``."""
    absolute = path.absolute()
    if len(os.fsencode(absolute)) > MAX_UNIX_PATH:
        raise KubeletFakeError(
            f"unix socket path {absolute} is longer than {MAX_UNIX_PATH} bytes; "
            "use a shorter temporary directory"
        )
    return f"unix://{absolute}"


def rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """Status code of a failed call (gRPC raises errors that are also ``grpc.Call``)."""
    return exc.code() if isinstance(exc, grpc.Call) else None


def describe_rpc_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, grpc.FutureTimeoutError):
        return "connection not ready before the timeout"
    return repr(exc)


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return False


class UnixGrpcServer:
    """A gRPC server on one unix socket with its own worker pool, stopped without leaks."""

    def __init__(
        self, socket_path: Path, register: Callable[[grpc.Server], None], workers: int = 8
    ) -> None:
        self.socket_path = socket_path.absolute()
        self._register = register
        self._workers = workers
        self._server: grpc.Server | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            raise KubeletFakeError(f"server on {self.socket_path} already started")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        target = unix_target(self.socket_path)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()  # a stale socket from an earlier run, as the kubelet does
        pool = ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix=f"fake-{self.socket_path.name}"
        )
        server = grpc.server(pool)
        self._register(server)
        try:
            server.add_insecure_port(target)
        except RuntimeError as exc:
            pool.shutdown(wait=False)
            raise KubeletFakeError(f"cannot listen on {target}: {exc}") from exc
        server.start()
        self._server, self._pool = server, pool

    def stop(self, grace: float | None = 0.2, unlink: bool = True) -> None:
        """Stop serving, cancel open streams, join the workers; optionally remove the socket."""
        server, pool = self._server, self._pool
        self._server = self._pool = None
        if server is not None:
            server.stop(grace).wait()
        if pool is not None:
            pool.shutdown(wait=True)
        if unlink and is_socket(self.socket_path):
            self.socket_path.unlink()


def wait_on(
    cond: threading.Condition,
    check: Callable[[], T | None],
    timeout: float,
    what: Callable[[], str],
) -> T:
    """Wait (holding ``cond``) until ``check()`` returns non-None; raise naming ``what``.

    The state behind ``check`` must be changed under ``cond`` followed by ``notify_all``.
    """
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            result = check()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KubeletFakeError(f"timed out after {timeout:.1f}s waiting for {what()}")
            cond.wait(remaining)
