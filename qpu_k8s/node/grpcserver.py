"""A gRPC server on one unix socket: how both kubelet plugins serve the kubelet.

The kubelet reaches plugins only through unix sockets in root-owned directories. The
socket is created 0600 (only root, i.e. the kubelet, may call us) in a 0750 directory. A
stale socket left by a crashed earlier run of this same instance is replaced; on stop,
the socket is removed only if it is still the one this server created (a successor may
already serve the same path: the device plugin's endpoint name is fixed).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc


def socket_inode(path: Path) -> int | None:
    """The inode of the unix socket at ``path``, None when there is none."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


class UnixServer:
    """Serves the services ``register`` adds on ``path`` until :meth:`stop`."""

    def __init__(
        self,
        path: Path,
        register: Callable[[grpc.Server], None],
        *,
        workers: int = 8,
        name: str | None = None,
    ) -> None:
        self.path = path.absolute()
        self._register = register
        self._workers = workers
        self._name = name or self.path.stem
        self._server: grpc.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.inode: int | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"grpc-{self._name}")
        server = grpc.server(pool)
        self._register(server)
        server.add_insecure_port(f"unix://{self.path}")
        server.start()
        os.chmod(self.path, 0o600)
        self._server, self._pool = server, pool
        self.inode = socket_inode(self.path)

    def stop(self, grace: float = 0.5) -> None:
        server, pool = self._server, self._pool
        self._server = self._pool = None
        if server is not None:
            server.stop(grace).wait(grace + 5)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.inode is not None and socket_inode(self.path) == self.inode:
            self.path.unlink(missing_ok=True)
        self.inode = None

    @property
    def running(self) -> bool:
        return self._server is not None
