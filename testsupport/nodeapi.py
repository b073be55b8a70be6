"""A fake apiserver for one node's agents, over real HTTP on 127.0.0.1.

What the node agents read and write: their Node (``/api/v1/nodes/<name>``), the node's
pods (``/api/v1/pods``: list and watch; the device plugin's ``NodePods``) and, with
``slices=True``, the DRA driver's ResourceSlices (``/apis/resource.k8s.io/v1/
resourceslices``: list, watch, create, replace, delete, and the ``/apis`` discovery that
picks the version), and ConfigMaps put by the test (``/api/v1/namespaces/<ns>/
configmaps``: list and watch; the agents' ``ConfigFeed``). Objects carry resource
versions, a watch streams events as they happen, so a benchmark or a test changes a pod
with :meth:`NodeApi.put_pod` and the real Kubernetes client sees it at once. Any other
POST is stored in :attr:`NodeApi.created` (usage records, Events), or refused with
:attr:`NodeApi.refuse_creates`. Selectors are ignored (only the agent under test writes);
anything else is 404.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

PODS = "/api/v1/pods"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class NodeApi:
    """Pods of one node, the Node itself and (optionally) ResourceSlices."""

    def __init__(
        self, node: str, labels: Mapping[str, str] | None = None, *, slices: bool = False
    ) -> None:
        self.node = node
        self.labels = dict(labels or {})
        self.serves_slices = slices
        self._cond = threading.Condition()
        self._version = 1
        # collection path -> object key -> object
        self._objects: dict[str, dict[str, dict[str, Any]]] = {PODS: {}, SLICES: {}}
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []
        self._closed = False
        # Other objects the agents create (usage records, Events): path -> objects, and the
        # status every such create is refused with (None: accepted; 409 when the name exists).
        self.created: dict[str, list[dict[str, Any]]] = {}
        self.refuse_creates: int | None = None
        self.connections = 0  # TCP connections accepted (a client that reuses them opens one)
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
        pod.setdefault("spec", {})["nodeName"] = self.node
        meta = pod["metadata"]
        self._put(PODS, f"{meta['namespace']}/{meta['name']}", pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        self._delete(PODS, f"{namespace}/{name}")

    def put_config_map(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        """Create or replace a ConfigMap; watchers of its namespace's collection are told."""
        obj = {"metadata": {"namespace": namespace, "name": name}, "data": dict(data)}
        self._put(_config_maps(namespace), name, obj)

    def delete_config_map(self, namespace: str, name: str) -> None:
        self._delete(_config_maps(namespace), name)

    def slices(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._objects[SLICES].values())

    # -- the store ----------------------------------------------------------------------------
    def _put(self, collection: str, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._objects.setdefault(collection, {})
            kind = "MODIFIED" if key in self._objects[collection] else "ADDED"
            self._version += 1
            obj["metadata"]["resourceVersion"] = str(self._version)
            self._objects[collection][key] = obj
            self._events.append((self._version, collection, kind, obj))
            self._cond.notify_all()
            return obj

    def _delete(self, collection: str, key: str) -> dict[str, Any] | None:
        with self._cond:
            obj = self._objects.get(collection, {}).pop(key, None)
            if obj is not None:
                self._version += 1
                self._events.append((self._version, collection, "DELETED", obj))
                self._cond.notify_all()
            return obj

    def _list(self, collection: str) -> dict[str, Any]:
        with self._cond:
            return {
                "kind": "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": list(self._objects.get(collection, {}).values()),
            }

    def _watch(self, collection: str, since: int, seconds: float) -> Iterator[bytes]:
        """Events of ``collection`` after resource version ``since``, for ``seconds``."""
        deadline = threading.Event()
        timer = threading.Timer(seconds, deadline.set)
        timer.daemon = True
        timer.start()
        sent = since or self._version
        try:
            while not deadline.is_set():
                with self._cond:
                    fresh = [e for e in self._events if e[0] > sent and e[1] == collection]
                    if not fresh:
                        sent = max(sent, self._version)
                        self._cond.wait(0.5)
                        if self._closed:
                            return
                        continue
                for version, _, kind, obj in fresh:
                    sent = version
                    yield (json.dumps({"type": kind, "object": obj}) + "\n").encode()
        finally:
            timer.cancel()

    def _write_slice(self, method: str, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Create (POST), replace (PUT) or delete (DELETE) a slice: (status, answer)."""
        with self._cond:
            current = self._objects[SLICES].get(name)
            if method == "DELETE":
                if current is None:
                    return 404, _status(404, "NotFound")
                return 200, self._delete(SLICES, name)
            meta = body.setdefault("metadata", {})
            if method == "POST":
                name = meta.get("name") or f"{meta.get('generateName', 'slice-')}{_suffix()}"
                if name in self._objects[SLICES]:
                    return 409, _status(409, "AlreadyExists")
                meta.update(name=name, uid=str(uuid.uuid4()))
                return 201, self._put(SLICES, name, body)
            if current is None:
                return 404, _status(404, "NotFound")
            if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict")
            meta["uid"] = current["metadata"]["uid"]
            return 200, self._put(SLICES, name, body)

    def _create(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._cond:
            if self.refuse_creates is not None:
                return self.refuse_creates, _status(self.refuse_creates, "Refused")
            objs = self.created.setdefault(path, [])
            meta = body.setdefault("metadata", {})
            name = meta.get("name") or f"{meta.get('generateName', 'obj-')}{_suffix()}"
            if any(o["metadata"]["name"] == name for o in objs):
                return 409, _status(409, "AlreadyExists")
            meta.update(name=name, uid=str(uuid.uuid4()))
            objs.append(body)
            return 201, body

    def _node(self) -> dict[str, Any]:
        return {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": self.node, "uid": f"uid-{self.node}", "labels": self.labels},
        }

    def __enter__(self) -> NodeApi:
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


def _config_maps(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"


def _status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "code": code, "reason": reason}


def _suffix() -> str:
    return uuid.uuid4().hex[:5]


_DISCOVERY = {
    "kind": "APIGroupList",
    "apiVersion": "v1",
    "groups": [
        {
            "name": "resource.k8s.io",
            "versions": [{"groupVersion": "resource.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "resource.k8s.io/v1", "version": "v1"},
        }
    ],
}


def _handler(api: NodeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with api._cond:
                api.connections += 1

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a benchmark's watch would log every poll."""

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path.rstrip("/")
            collection = (
                path
                if path == PODS
                or (api.serves_slices and path == SLICES)
                or (path.startswith("/api/v1/namespaces/") and path.endswith("/configmaps"))
                else ""
            )
            if path == f"/api/v1/nodes/{api.node}":
                self._send(200, api._node())
            elif path == "/apis" and api.serves_slices:
                self._send(200, _DISCOVERY)
            elif collection and query.get("watch") in ("true", "True", "1"):
                since = int(query.get("resourceVersion") or 0)
                seconds = float(query.get("timeoutSeconds") or 300)
                self._stream(api._watch(collection, since, seconds))
            elif collection:
                self._send(200, api._list(collection))
            else:
                self._send(404, _status(404, "NotFound"))

        def do_POST(self) -> None:
            self._write("POST")

        def do_PUT(self) -> None:
            self._write("PUT")

        def do_DELETE(self) -> None:
            self._write("DELETE")

        def _write(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            path = urlparse(self.path).path.rstrip("/")
            if method == "POST" and not path.startswith(SLICES):
                self._send(*api._create(path, body))
                return
            if not api.serves_slices or not path.startswith(SLICES):
                self._send(404, _status(404, "NotFound"))
                return
            name = path[len(SLICES) + 1 :]
            if (method == "POST") != (not name):
                self._send(405, _status(405, "MethodNotAllowed"))
                return
            self._send(*api._write_slice(method, name, body))

        def _send(self, code: int, body: Any) -> None:
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
    that container has terminated with it. Complete enough for the client's V1Pod."""
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
