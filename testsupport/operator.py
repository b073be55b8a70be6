"""Test support for the operator: CRD schema/CEL evaluation, an in-memory API, fake vendors.

(No ``__init__.py`` in this folder: a package named ``operator`` would shadow the standard
library's module, so test and helper file names here are unique on their own.)
"""

from __future__ import annotations

import base64
import copy
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from qpu_k8s.core.deadline import DeadlineExceeded, call_with_deadline
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.qrmi_client import Health, LateAcquire, LateRelease, TaskState
from qpu_k8s.core.vendors import profile
from qpu_k8s.operator.kube import ApiStatusError


# -- CRD schema and CEL ----------------------------------------------------------------------
def apply_defaults(schema: Mapping[str, Any], obj: Any) -> Any:
    """Structural defaulting as the apiserver does it (absent fields with a default)."""
    if not isinstance(obj, dict):
        return obj
    out = dict(obj)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = apply_defaults(sub, out[key])
    return out


def schema_errors(schema: Mapping[str, Any], obj: Any) -> list[tuple[str, str]]:
    """OpenAPI v3 schema errors as (dotted path, message), like the apiserver's field errors."""
    v = jsonschema.Draft7Validator(schema)
    out = []
    for err in v.iter_errors(obj):
        path = ".".join(str(p) for p in err.absolute_path)
        out.append((path, err.message))
    return sorted(out)


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def _walk(
    schema: Mapping[str, Any], value: Any, path: str
) -> Iterator[tuple[str, dict[str, Any], Any]]:
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule, value
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                yield from _walk(sub, value[key], f"{path}.{key}" if path else key)


def cel_errors(schema: Mapping[str, Any], obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Evaluate every ``x-kubernetes-validations`` rule with cel-python, after defaulting.

    Returns (field path, message) for each rule that is false or fails to evaluate, the path
    being the rule's location plus its ``fieldPath`` (what the apiserver reports).
    """
    data = apply_defaults(schema, obj)
    out = []
    for path, rule, value in _walk(schema, data, ""):
        try:
            result = _program(rule["rule"]).evaluate({"self": json_to_cel(value)})
        except CELEvalError as err:
            out.append((path, f"evaluation error: {err}"))
            continue
        if isinstance(result, CELEvalError) or not bool(result):
            field = path + rule.get("fieldPath", "")
            out.append((field, rule["message"]))
    return sorted(out)


def cr(name: str, spec: Mapping[str, Any], **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "quantum.example.com/v1alpha1",
        "kind": "QuantumBackend",
        "metadata": meta,
        "spec": dict(spec),
    }


# -- fake vendor client ----------------------------------------------------------------------
class FakeClient:
    """A QuantumResourceClient whose answers the test sets (no network)."""

    def __init__(self, backend: QuantumBackend, creds: Mapping[str, str], timeout: float) -> None:
        self.backend = backend
        self.creds = dict(creds)
        self.timeout = timeout
        self.health_answer = Health(True, "online", "", 0)
        # What the vendor's target() answers, in its own shape (IBM configuration, pulser specs).
        self.target_answer: dict[str, Any] | Exception = (
            {"max_atom_num": 7, "dimensions": 2, "min_atom_distance": 5.0}
            if profile(backend.spec.type).vendor == "pasqal"
            else {
                "configuration": {
                    "n_qubits": 7,
                    "processor_type": {"family": "Falcon", "revision": 5},
                },
                "properties": {"qubits": [], "gates": []},
            }
        )
        self.calls: list[str] = []

    def health(self) -> Health:
        """Like QrmiClient: the vendor's answer under the client's own probe deadline."""
        try:
            return call_with_deadline(self.vendor_health, self.timeout)
        except DeadlineExceeded:
            return Health(False, "timeout", f"no answer within {self.timeout:g}s")

    def vendor_health(self) -> Health:
        self.calls.append("health")
        return self.health_answer

    def target(self) -> dict[str, Any]:
        self.calls.append("target")
        if isinstance(self.target_answer, Exception):
            raise self.target_answer
        return self.target_answer

    def metadata(self) -> dict[str, str]:
        self.calls.append("metadata")
        return {"backend_name": self.backend.spec.resource_id}

    def acquire(self, *, on_late: LateAcquire | None = None) -> str:
        raise NotImplementedError

    def release(self, token: str, *, on_late: LateRelease | None = None) -> None:
        raise NotImplementedError

    def task_start(self, payload: Any, token: str | None = None) -> str:
        raise NotImplementedError

    def task_status(self, task_id: str, token: str | None = None) -> TaskState:
        raise NotImplementedError

    def task_result(self, task_id: str, token: str | None = None) -> str:
        raise NotImplementedError

    def task_stop(self, task_id: str, token: str | None = None) -> None:
        raise NotImplementedError


class FakeClients:
    """A client factory remembering the client it made per backend."""

    def __init__(self, timeout: float = 0.5) -> None:
        self.by_name: dict[str, FakeClient] = {}
        self.setup: Callable[[FakeClient], None] | None = None
        self.timeout = timeout  # each client's probe deadline

    def __call__(self, backend: QuantumBackend, creds: Mapping[str, str]) -> FakeClient:
        c = FakeClient(backend, creds, self.timeout)
        old = self.by_name.get(backend.name)
        if old is not None:
            c.health_answer, c.target_answer = old.health_answer, old.target_answer
        if self.setup is not None:
            self.setup(c)
        self.by_name[backend.name] = c
        return c


# -- in-memory API ---------------------------------------------------------------------------
class FakeKube:
    """The subset of :class:`qpu_k8s.operator.kube.Kube` the controller uses, in memory.

    ``log`` records every write in order; ``down`` makes every call fail like an apiserver
    that does not answer.
    """

    def __init__(self) -> None:
        self.backends: dict[str, dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[tuple[str, ...]] = []
        self.down = False
        self.timeout = 1.0

    def _check(self) -> None:
        if self.down:
            raise ApiStatusError(0, "apiserver not reachable: ConnectionRefusedError")

    # backends
    def add_backend(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        self.backends[meta["name"]] = obj
        return obj

    async def list_backends(self, label_selector: str = "") -> list[dict[str, Any]]:
        self._check()
        want = dict(p.split("=", 1) for p in label_selector.split(",") if "=" in p)
        return [
            copy.deepcopy(o)
            for o in self.backends.values()
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
        ]

    async def patch_backend_status(self, name: str, status: Mapping[str, Any]) -> None:
        self._check()
        if name not in self.backends:
            raise ApiStatusError(404, "HTTP 404 Not Found")
        self.backends[name]["status"] = copy.deepcopy(dict(status))
        self.log.append(("status", name))

    # secrets
    def add_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.secrets[(namespace, name)] = {
            k: base64.b64encode(v.encode()).decode() for k, v in data.items()
        }

    async def secret_data(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self._check()
        self.log.append(("secret", namespace, name))
        try:
            return dict(self.secrets[(namespace, name)])
        except KeyError:
            raise ApiStatusError(404, "HTTP 404 Not Found") from None

    # config maps, events, namespaces
    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        cm = self.config_maps.get((namespace, name))
        return copy.deepcopy(cm) if cm is not None else None

    async def write_config_map(self, body: dict[str, Any], exists: bool) -> None:
        self._check()
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        assert exists == (key in self.config_maps)
        self.config_maps[key] = copy.deepcopy(body)
        self.log.append(("configmap", *key))

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._check()
        self.events.append(copy.deepcopy(body))

    async def list_namespaces(self) -> list[dict[str, Any]]:
        self._check()
        return [copy.deepcopy(n) for n in self.namespaces.values()]

    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        self.namespaces[name] = {"metadata": {"name": name, "labels": dict(labels or {})}}

    # claims
    async def dra_available(self) -> bool:
        return True

    async def list_claims(
        self, label_selector: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        self._check()
        want = dict(p.split("=", 1) for p in label_selector.split(",") if "=" in p)
        return [
            copy.deepcopy(c)
            for (ns, _), c in sorted(self.claims.items())
            if (namespace is None or ns == namespace)
            and all((c["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
        ]

    async def create_claim(self, body: dict[str, Any]) -> None:
        self._check()
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.claims:
            raise ApiStatusError(409, "HTTP 409 AlreadyExists")
        self.claims[key] = copy.deepcopy(body)
        self.log.append(("claim-create", *key))

    async def delete_claim(self, namespace: str, name: str) -> None:
        self._check()
        claim = self.claims.get((namespace, name))
        if claim is None:
            return
        if (claim.get("status") or {}).get("reservedFor"):
            # The real claim controller holds a reserved claim until its pods are gone.
            claim["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            del self.claims[(namespace, name)]
        self.log.append(("claim-delete", namespace, name))


class FakeSlices:
    """Records what the controller asks the slice publisher to do."""

    def __init__(self, log: list[tuple[str, ...]]) -> None:
        self.log = log
        self.published: dict[str, int] = {}

    async def publish(self, backend: QuantumBackend, status: Any, uid: str = "") -> bool:
        self.published[backend.name] = backend.spec.lanes
        self.log.append(("slice-publish", backend.name))
        return True

    async def remove(self, name: str) -> None:
        self.published.pop(name, None)
        self.log.append(("slice-remove", name))


def ready_condition(status: Mapping[str, Any] | None, ctype: str = "Ready") -> dict[str, Any]:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def valid_reason(reason: str) -> bool:
    return bool(_REASON.fullmatch(reason))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
