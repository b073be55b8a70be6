"""``resource.k8s.io/v1`` on an apiserver that lacks it, and a tiny scheduler allocator.

The test cluster (``shared/k8s-local``) is Kubernetes 1.20: no DRA. :func:`install` adds
CustomResourceDefinitions named for the real group and kinds (ResourceSlice, ResourceClaim
with a status subresource, ResourceClaimTemplate, DeviceClass) whose schemas are the real
1.34 OpenAPI schemas shipped with ``kubernetes-validate``, made structural. The real
Kubernetes client then reads and writes the real REST paths, with real resourceVersions,
conflicts, label selectors and watches.

What this cannot show (say so where it matters): the built-in type's own validation
(CEL rules, the 128-device and 32-attribute limits, immutability), field selectors on
``spec.nodeName``/``spec.driver``, the real scheduler's allocator (:class:`Allocator` plays
it), the kubelet's DRA calls (the fake kubelet makes them), DeviceClass
``extendedResourceName`` handling, and ValidatingAdmissionPolicies (1.20 has none).

:class:`Allocator` does what the scheduler's DRA plugin does for the cases our examples use:
``exactly`` requests (ExactlyOne / ExactCount / All) and ``firstAvailable`` sub-requests,
DeviceClass and request CEL selectors evaluated with ``cel-python``, taints and tolerations,
the newest complete pool generation only, no device given twice, then writes
``status.allocation`` (with the class and claim configs, as the scheduler copies them) and
``status.reservedFor`` through the status subresource.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import as_object

GROUP = "resource.k8s.io"
VERSION = "v1"
SCHEMA_VERSION = "v1.34.0-local"
APPROVAL = "https://github.com/kubernetes/enhancements/pull/4381"

KINDS: dict[str, tuple[str, str, bool]] = {
    # kind: (plural, scope, status subresource)
    "ResourceSlice": ("resourceslices", "Cluster", False),
    "DeviceClass": ("deviceclasses", "Cluster", False),
    "ResourceClaim": ("resourceclaims", "Namespaced", True),
    "ResourceClaimTemplate": ("resourceclaimtemplates", "Namespaced", False),
}


class AllocationError(RuntimeError):
    """The allocator found no devices for a request (the scheduler would leave the pod)."""


# -- schemas ------------------------------------------------------------------------------
@cache
def _definitions() -> dict[str, Any]:
    base = resources.files("kubernetes_validate") / "kubernetes-json-schema" / SCHEMA_VERSION
    defs: dict[str, Any] = json.loads((base / "_definitions.json").read_text())["$defs"]
    return defs


_SPECIAL: dict[str, dict[str, Any]] = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"x-kubernetes-int-or-string": True},
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"x-kubernetes-int-or-string": True},
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": {"type": "string", "format": "date-time"},
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": {"type": "string", "format": "date-time"},
    "io.k8s.apimachinery.pkg.runtime.RawExtension": {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    },
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    },
}
_KEEP = {
    "type",
    "format",
    "enum",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "maxItems",
    "maxLength",
    "maximum",
    "minimum",
}


def structural(node: Mapping[str, Any], stack: tuple[str, ...] = ()) -> dict[str, Any]:
    """Turn one kubernetes-validate JSON schema node into a structural CRD schema node."""
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in _SPECIAL:
            return dict(_SPECIAL[name])
        if name in stack:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return structural(_definitions()[name], (*stack, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "type":
            types = [value] if isinstance(value, str) else list(value)
            real = [t for t in types if t != "null"]
            if len(real) != 1:
                continue
            out["type"] = real[0]
            if "null" in types:
                out["nullable"] = True
        elif key == "properties":
            out["properties"] = {k: structural(v, stack) for k, v in value.items()}
        elif key == "items":
            out["items"] = structural(value, stack)
        elif key == "additionalProperties":
            if isinstance(value, Mapping):
                out["additionalProperties"] = structural(value, stack)
        elif key == "enum":
            out["enum"] = [v for v in value if v is not None]
        else:
            out[key] = copy.deepcopy(value)
    if "oneOf" in node and "type" not in out:
        out["x-kubernetes-int-or-string"] = True
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        out["type"] = "object"
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" in out:
        del out["additionalProperties"]
    if out.get("x-kubernetes-list-type") == "map":
        _fix_list_map(out)
    return out


def _fix_list_map(out: dict[str, Any]) -> None:
    """CRD list-maps need non-nullable items and required keys; the built-in type has an
    optional key (``shareID``), which a CRD cannot express: that list becomes atomic."""
    items = out.get("items") or {}
    items.pop("nullable", None)
    keys = out.get("x-kubernetes-list-map-keys") or []
    if any(k not in (items.get("required") or []) for k in keys):
        out["x-kubernetes-list-type"] = "atomic"
        out.pop("x-kubernetes-list-map-keys", None)
        return
    for k in keys:
        (items.get("properties") or {}).get(k, {}).pop("nullable", None)


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition standing in for the built-in ``kind``."""
    plural, scope, status = KINDS[kind]
    schema = structural(_definitions()[f"io.k8s.api.resource.v1.{kind}"])
    schema["properties"]["metadata"] = {"type": "object"}
    schema.pop("nullable", None)
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            # *.k8s.io groups need this annotation (protected API groups).
            "annotations": {"api-approved.kubernetes.io": APPROVAL},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
            },
            "versions": [version],
        },
    }


def apply_crd(api: client.ApiClient, crd_body: Mapping[str, Any]) -> None:
    """Create a CustomResourceDefinition, or replace the one of that name."""
    ext = client.ApiextensionsV1Api(api)
    # The client accepts a plain dict body; its stubs only name the model class.
    body: Any = copy.deepcopy(dict(crd_body))
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as err:
        if err.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        assert current.metadata is not None
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)


def install(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Create (or update) the four CRDs and wait until the apiserver serves them."""
    for kind in KINDS:
        apply_crd(api, crd(kind))
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    pending = list(KINDS)
    while pending:
        kind = pending[0]
        plural, scope, _ = KINDS[kind]
        try:
            if scope == "Cluster":
                custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
            else:
                custom.list_namespaced_custom_object(GROUP, VERSION, "default", plural, limit=1)
            pending.pop(0)
            continue
        except ApiException as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)  # polling the apiserver for the CRD to be served; no event to wait on


# -- CEL ----------------------------------------------------------------------------------
def cel_device(driver: str, device: Mapping[str, Any]) -> dict[str, Any]:
    """The ``device`` variable a DRA CEL selector sees, for a v1 slice device."""
    attrs: dict[str, dict[str, Any]] = {}
    for name, typed in (device.get("attributes") or {}).items():
        domain, sep, short = name.rpartition("/")
        domain = domain if sep else driver
        value = next(
            (typed[k] for k in ("bool", "int", "string", "version") if typed.get(k) is not None),
            None,
        )
        attrs.setdefault(domain, {})[short] = value
    caps: dict[str, dict[str, Any]] = {}
    for name, cap in (device.get("capacity") or {}).items():
        domain, sep, short = name.rpartition("/")
        caps.setdefault(domain if sep else driver, {})[short] = cap.get("value")
    return {
        "driver": driver,
        "attributes": attrs,
        "capacity": caps,
        "allowMultipleAllocations": bool(device.get("allowMultipleAllocations")),
    }


_ENV = celpy.Environment()


@cache
def _program(expression: str) -> Any:
    return _ENV.program(_ENV.compile(expression))


def cel_matches(expression: str, device: Mapping[str, Any]) -> bool:
    """Evaluate one selector; an evaluation error counts as no match (and is not hidden:
    Kubernetes fails the allocation on a CEL runtime error, so tests should assert on
    :func:`cel_errors` where it matters)."""
    try:
        result = _program(expression).evaluate({"device": json_to_cel(dict(device))})
    except CELEvalError:
        return False
    if isinstance(result, CELEvalError):
        return False
    return bool(result)


def cel_errors(expression: str, device: Mapping[str, Any]) -> str | None:
    """The evaluation error of a selector on a device, or None."""
    try:
        result = _program(expression).evaluate({"device": json_to_cel(dict(device))})
    except CELEvalError as err:
        return str(err)
    return str(result) if isinstance(result, CELEvalError) else None


# -- allocator ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    driver: str
    pool: str
    device: Mapping[str, Any]
    node_name: str | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.driver, self.pool, str(self.device["name"]))


def _tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        op = tol.get("operator", "Equal")
        if op == "Exists" and (not tol.get("key") or tol["key"] == taint.get("key")):
            return True
        if (
            op == "Equal"
            and tol.get("key") == taint.get("key")
            and tol.get("value", "") == taint.get("value", "")
        ):
            return True
    return False


def current_devices(slices: Iterable[Mapping[str, Any]]) -> list[Candidate]:
    """Devices of the newest complete generation of every pool."""
    pools: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        spec = s["spec"]
        pools.setdefault((spec["driver"], spec["pool"]["name"]), []).append(s)
    out: list[Candidate] = []
    for (driver, pool), items in sorted(pools.items()):
        newest = max(int(i["spec"]["pool"]["generation"]) for i in items)
        current = [i for i in items if int(i["spec"]["pool"]["generation"]) == newest]
        if len(current) < int(current[0]["spec"]["pool"]["resourceSliceCount"]):
            continue  # incomplete pool: the scheduler waits
        for s in current:
            node = s["spec"].get("nodeName")
            for dev in s["spec"].get("devices") or []:
                out.append(Candidate(driver, pool, dev, node))
    return out


class Allocator:
    """Plays the scheduler's DRA allocation against the apiserver, for tests."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    def _list(self, plural: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = as_object(
            self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        ).get("items", [])
        return items

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return as_object(
            self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "resourceclaims", name
            )
        )

    def _in_use(self, skip_uid: str) -> set[tuple[str, str, str]]:
        used = set()
        for claim in self._list("resourceclaims"):
            if claim["metadata"]["uid"] == skip_uid:
                continue
            alloc = (claim.get("status") or {}).get("allocation") or {}
            for r in (alloc.get("devices") or {}).get("results") or []:
                used.add((r["driver"], r["pool"], r["device"]))
        return used

    def _matches(
        self, cand: Candidate, selectors: Sequence[Mapping[str, Any]], tolerations: Any
    ) -> bool:
        for taint in cand.device.get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
                tolerations or [], taint
            ):
                return False
        dev = cel_device(cand.driver, cand.device)
        return all(cel_matches(s["cel"]["expression"], dev) for s in selectors if s.get("cel"))

    def plan(
        self, claim: Mapping[str, Any], node_name: str | None = None
    ) -> list[tuple[str, Candidate]]:
        """(request name, device) pairs for a claim, without writing anything."""
        classes = {c["metadata"]["name"]: c for c in self._list("deviceclasses")}
        candidates = [
            c
            for c in current_devices(self._list("resourceslices"))
            if node_name is None or c.node_name in (None, node_name)
        ]
        taken = self._in_use(claim["metadata"]["uid"])
        chosen: list[tuple[str, Candidate]] = []
        spec = (claim.get("spec") or {}).get("devices") or {}
        if spec.get("constraints"):
            raise AllocationError("the test allocator does not implement constraints")
        for req in spec.get("requests") or []:
            options: list[tuple[str, Mapping[str, Any]]]
            if req.get("exactly"):
                options = [(req["name"], req["exactly"])]
            else:
                options = [
                    (f"{req['name']}/{sub['name']}", sub) for sub in req.get("firstAvailable") or []
                ]
            for request_name, exact in options:
                cls = classes.get(exact["deviceClassName"])
                if cls is None:
                    raise AllocationError(f"DeviceClass {exact['deviceClassName']!r} not found")
                selectors = [*(cls["spec"].get("selectors") or []), *(exact.get("selectors") or [])]
                fits = [
                    c
                    for c in candidates
                    if c.key not in taken and self._matches(c, selectors, exact.get("tolerations"))
                ]
                mode = exact.get("allocationMode", "ExactCount")
                count = len(fits) if mode == "All" else int(exact.get("count", 1))
                if len(fits) >= max(count, 1):
                    for c in fits[:count]:
                        chosen.append((request_name, c))
                        taken.add(c.key)
                    break
            else:
                raise AllocationError(
                    f"claim {claim['metadata']['name']}: no devices for request {req['name']!r}"
                )
        return chosen

    def allocate(
        self,
        namespace: str,
        name: str,
        *,
        node_name: str | None = None,
        reserved_for: Sequence[Mapping[str, str]] = (),
    ) -> dict[str, Any]:
        """Allocate (if not yet) and reserve the claim for ``reserved_for`` pods."""
        claim = self.get_claim(namespace, name)
        status = claim.get("status") or {}
        if not status.get("allocation"):
            chosen = self.plan(claim, node_name)
            classes = {c["metadata"]["name"]: c for c in self._list("deviceclasses")}
            config: list[dict[str, Any]] = []
            spec = claim["spec"].get("devices") or {}
            for req in spec.get("requests") or []:
                cls_name = (req.get("exactly") or {}).get("deviceClassName")
                cls = classes.get(cls_name or "")
                for cfg in (cls or {}).get("spec", {}).get("config") or []:
                    config.append({"source": "FromClass", "requests": [req["name"]], **cfg})
            for cfg in spec.get("config") or []:
                config.append({"source": "FromClaim", **cfg})
            nodes = {c.node_name for _, c in chosen if c.node_name}
            allocation: dict[str, Any] = {
                "devices": {
                    "results": [
                        {
                            "request": r,
                            "driver": c.driver,
                            "pool": c.pool,
                            "device": c.device["name"],
                        }
                        for r, c in chosen
                    ],
                    "config": config,
                },
                "allocationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if nodes:
                allocation["nodeSelector"] = {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": sorted(nodes)}
                            ]
                        }
                    ]
                }
            status = {**status, "allocation": allocation}
        reserved = list(status.get("reservedFor") or [])
        for ref in reserved_for:
            if not any(r.get("uid") == ref["uid"] for r in reserved):
                reserved.append({"resource": "pods", **ref})
        status["reservedFor"] = reserved
        claim["status"] = status
        return as_object(
            self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "resourceclaims", name, claim
            )
        )

    def unreserve(self, namespace: str, name: str, pod_uid: str) -> dict[str, Any]:
        """Drop a pod from ``reservedFor``; deallocate when none is left (as the scheduler)."""
        claim = self.get_claim(namespace, name)
        status = claim.get("status") or {}
        status["reservedFor"] = [
            r for r in status.get("reservedFor") or [] if r.get("uid") != pod_uid
        ]
        if not status["reservedFor"]:
            status.pop("allocation", None)
        claim["status"] = status
        return as_object(
            self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "resourceclaims", name, claim
            )
        )
