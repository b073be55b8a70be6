"""A fake apiserver for one node's pods: what the device plugin reads, over real HTTP.

The device plugin learns that a container has ended for good from its node's pods
(``qpu_k8s.node.pods.NodePods``: list, then watch, ``/api/v1/pods`` with a
``spec.nodeName`` field selector) and reads its Node's labels (``/api/v1/nodes/<name>``).
This serves exactly those on 127.0.0.1 with resource versions and a streaming watch, so a
benchmark or a test changes a pod with :meth:`PodApi.put_pod` and the real Kubernetes
client sees the event at once. Nothing else of the API is served (404).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml


class PodApi:
    """Pods of one node and the Node itself; ``kubeconfig()`` points a client at it."""

    def __init__(self, node: str, labels: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.labels = dict(labels or {})
        self._cond = threading.Condition()
        self._version = 1
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._closed = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server (plain HTTP, no credentials) to ``path``."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # -- what the caller changes ---------------------------------------------------------------
    def put_pod(self, pod: dict[str, Any]) -> None:
        """Create or replace a pod (bound to this node); watchers get ADDED or MODIFIED."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._cond:
            kind = "MODIFIED" if key in self._pods else "ADDED"
            self._version += 1
            meta["resourceVersion"] = str(self._version)
            pod.setdefault("spec", {})["nodeName"] = self.node
            self._pods[key] = pod
            self._events.append((self._version, kind, pod))
            self._cond.notify_all()

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._cond:
            pod = self._pods.pop((namespace, name))
            self._version += 1
            self._events.append((self._version, "DELETED", pod))
            self._cond.notify_all()

    # -- serving -------------------------------------------------------------------------------
    def _list(self) -> dict[str, Any]:
        with self._cond:
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": list(self._pods.values()),
            }

    def _watch(self, since: int, seconds: float) -> Iterator[bytes]:
        """Events after resource version ``since``, as watch lines, for ``seconds``."""
        deadline = threading.Event()
        timer = threading.Timer(seconds, deadline.set)
        timer.daemon = True
        timer.start()
        sent = since
        try:
            while not deadline.is_set():
                with self._cond:
                    fresh = [e for e in self._events if e[0] > sent]
                    if not fresh:
                        self._cond.wait(0.5)
                        if self._closed:
                            return
                        continue
                for version, kind, obj in fresh:
                    sent = version
                    yield (json.dumps({"type": kind, "object": obj}) + "\n").encode()
        finally:
            timer.cancel()

    def _node(self) -> dict[str, Any]:
        return {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": self.node, "uid": f"uid-{self.node}", "labels": self.labels},
        }

    def __enter__(self) -> PodApi:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()


def _handler(api: PodApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a benchmark's watch would log every poll."""

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == f"/api/v1/nodes/{api.node}":
                self._send(api._node())
            elif url.path == "/api/v1/pods" and query.get("watch") in ("true", "True", "1"):
                self._stream(
                    api._watch(
                        int(query.get("resourceVersion") or 0),
                        float(query.get("timeoutSeconds") or 300),
                    )
                )
            elif url.path == "/api/v1/pods":
                self._send(api._list())
            else:
                self._send({"kind": "Status", "code": 404, "reason": "NotFound"}, 404)

        def _send(self, body: dict[str, Any], code: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, lines: Iterator[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for line in lines:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                return
            self.close_connection = True

    return Handler


def pod(
    namespace: str,
    name: str,
    resource: str,
    *,
    phase: str = "Running",
    restart_policy: str = "Never",
    exit_code: int | None = None,
) -> dict[str, Any]:
    """A pod with one container ``main`` asking for one ``resource``; ``exit_code`` set:
    that container has terminated with it."""
    state: dict[str, Any] = (
        {"running": {}} if exit_code is None else {"terminated": {"exitCode": exit_code}}
    )
    status = {
        "name": "main",
        "state": state,
        "image": "busybox",
        "imageID": "",
        "ready": exit_code is None,
        "restartCount": 0,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}-{name}"},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [
                {"name": "main", "image": "busybox", "resources": {"limits": {resource: "1"}}}
            ],
        },
        "status": {"phase": phase, "containerStatuses": [status]},
    }
