"""A TCP proxy in front of the apiserver that the fault tests can cut.

Modes (``set_mode``):

* ``up``: forward both ways.
* ``down``: every connection is closed and new ones are reset at once (an apiserver that
  is restarting or unreachable with a clean refusal).
* ``blackhole``: connections are accepted and nothing is ever answered; connections that
  were open stay frozen forever, also after going ``up`` again (a partition in which the
  other end forgot the connection: without a client-side timeout, a call on it never
  returns).

TLS passes through untouched (the proxy sees bytes only), so the kubeconfig keeps the
apiserver's CA and only its ``server`` URL changes to the proxy's address.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from typing import Literal

Mode = Literal["up", "down", "blackhole"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mode: Mode = "up"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._frozen: list[socket.socket] = []
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            pairs, self._pairs = (self._pairs, []) if mode != "up" else ([], self._pairs)
        for client, upstream in pairs:
            if mode == "down":
                _close(client)
                if upstream is not None:
                    _close(upstream)
            else:  # blackhole: stop forwarding, keep the client's socket open, unanswered
                if upstream is not None:
                    _close(upstream)
                with self._lock:
                    self._frozen.append(client)

    def close(self) -> None:
        self._stop.set()
        _close(self._listener)
        with self._lock:
            pairs, self._pairs = self._pairs, []
            frozen, self._frozen = self._frozen, []
        for client, upstream in pairs:
            _close(client)
            if upstream is not None:
                _close(upstream)
        for sock in frozen:
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            mode = self._mode
            if mode == "down":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                _close(client)  # RST: connection refused/reset
            elif mode == "blackhole":
                with self._lock:
                    self._frozen.append(client)
            else:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _close(client)
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._pairs.append((client, upstream))
                threading.Thread(
                    target=self._pump, args=(client, upstream), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
        except (ValueError, OSError):
            return
        try:
            while not self._stop.is_set():
                events = sel.select(timeout=0.2)
                with self._lock:
                    live = any(c is client for c, _ in self._pairs)
                if not live:  # cut by set_mode, which handled the sockets
                    return
                for key, _ in events:
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(client, upstream)
                        return
                    try:
                        dst.sendall(data)
                    except OSError:
                        self._drop(client, upstream)
                        return
        finally:
            sel.close()

    def _drop(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            self._pairs = [(c, u) for c, u in self._pairs if c is not client]
        _close(client)
        _close(upstream)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
