"""The QuantumBackend CRD, generated from the pydantic models (one source of truth).

``python -m qpu_k8s.operator.crd`` writes ``manifests/crd/quantumbackends.yaml`` and
``quantumusages.yaml`` (:mod:`qpu_k8s.operator.usage_crd`) and ``quantumbudgets.yaml``
(:mod:`qpu_k8s.operator.budget_crd`) (CEL
``x-kubernetes-validations``, GA since Kubernetes 1.29, mirror the model's cross-field
checks); ``--check`` fails when the committed file is stale.

The JSON schema pydantic emits is turned into a *structural* schema: ``$ref`` inlined,
``Optional`` unwrapped, titles dropped, every node typed. What pydantic cannot see (regexes in
field validators, the per-type config tables) is added from the same constants the model
validates with, so the apiserver and the model refuse the same objects. Two checks stay in
the operator only, reported as an ``InvalidSpec`` condition: attribute values (bool, int or
string: the map is schemaless to the apiserver, and CEL cannot see schemaless values) and
the ``looks_secret`` name list beyond the regex.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from qpu_k8s.core.model import (
    CONFIG_KEY_RE,
    DNS_LABEL_RE,
    LABEL_KEY_RE,
    MAX_NAME_LEN,
    RESOURCE_ID_RE,
    AccessMode,
    QuantumBackend,
    QuantumBackendSpec,
)
from qpu_k8s.core.names import API_GROUP, API_VERSION, KIND, PLURAL
from qpu_k8s.core.vendors import PROFILES, SECRET_LOOKING_RE, ResourceType
from qpu_k8s.operator.status import BackendStatus

SINGULAR = "quantumbackend"
SHORT_NAMES = ["qb"]
CATEGORIES = ["qpu"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"

# Bounds the model leaves open but the apiserver needs to price CEL rules that iterate maps.
MAX_CONFIG_KEYS = 64
MAX_SELECTOR_LABELS = 32
MAX_ATTRIBUTES = 32  # also DRA's per-device limit on attributes + capacities

_SECRET_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # noqa: S105 - a name pattern
_LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"

# JSON-schema keywords a structural schema keeps as they are.
_KEEP = (
    "type",
    "description",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
)
_SCALARS = {"boolean", "integer", "string", "number"}


@dataclass(frozen=True)
class Rule:
    """One CEL rule (``x-kubernetes-validations`` entry) and where it sits."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str = "FieldValueInvalid"
    # "spec" for rules on the spec object, "spec.config" for the config map, "root" for self.
    scope: str = "spec"

    def to_api(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message, "reason": self.reason}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _anchored(regex: re.Pattern[str]) -> str:
    p = regex.pattern
    return p if p.startswith("^") else f"^{p}$"


def _text(desc: str) -> str:
    """Docstrings use reST ``literals``; kubectl explain shows plain text."""
    return re.sub(r"``([^`]+)``", r"\1", " ".join(desc.split()))


def _structural(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            node = {**_resolve(options[0], defs), **node}
        elif all(o.get("type") in _SCALARS for o in options):
            kinds = sorted(o["type"] for o in options)
            out: dict[str, Any] = {}
            if kinds == ["integer", "string"]:
                out["x-kubernetes-int-or-string"] = True
            else:
                out["x-kubernetes-preserve-unknown-fields"] = True
            if "description" in node:
                out["description"] = _text(node["description"])
            return out
        else:
            raise ValueError(f"cannot express anyOf {options!r} in a structural schema")
    out = {k: node[k] for k in _KEEP if k in node}
    if "description" in out:
        out["description"] = _text(out["description"])
    if node.get("default") is not None:
        out["default"] = node["default"]
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
    elif isinstance(node.get("additionalProperties"), dict):
        out["type"] = "object"
        out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    if "type" not in out:
        raise ValueError(f"schema node without a type: {node!r}")
    return out


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**defs[node["$ref"].rsplit("/", 1)[-1]], **rest}
    return dict(node)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A pydantic model's JSON schema as a structural OpenAPI v3 schema (every CRD's spec
    and status come from their models this way)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def object_schema(
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any] | None = None,
    rules: list[Rule] | None = None,
) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one of our kinds: metadata, the ``spec`` (required), an
    optional ``status``, and CEL rules on the whole object (``self.metadata.name``...)."""
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    if status is not None:
        properties["status"] = status
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": properties,
    }
    if rules is not None:
        root["x-kubernetes-validations"] = [r.to_api() for r in rules]
    return root


def spec_schema() -> dict[str, Any]:
    """The ``spec`` schema: the model's, plus patterns and map bounds, plus CEL rules."""
    s = model_schema(QuantumBackendSpec)
    props = s["properties"]
    props["resourceId"]["pattern"] = _anchored(RESOURCE_ID_RE)
    props["credentialsSecretRef"]["properties"]["name"]["pattern"] = _SECRET_NAME
    cfg = props["config"]
    cfg["maxProperties"] = MAX_CONFIG_KEYS
    cfg["additionalProperties"]["maxLength"] = 4096
    sel = props["nodeSelector"]
    sel["maxProperties"] = MAX_SELECTOR_LABELS
    sel["additionalProperties"].update(maxLength=63, pattern=_LABEL_VALUE)
    props["attributes"]["maxProperties"] = MAX_ATTRIBUTES
    _attach_rules(s, validation_rules())
    return s


def _drop_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_drop_defaults(v) for v in node]
    return node


def status_schema() -> dict[str, Any]:
    """The ``status`` schema. No defaults: only the operator writes status, and a 1.20
    apiserver rejects an empty-string default (it arrives as null)."""
    s: dict[str, Any] = _drop_defaults(model_schema(BackendStatus))
    conds = s["properties"]["conditions"]
    conds["x-kubernetes-list-type"] = "map"
    conds["x-kubernetes-list-map-keys"] = ["type"]
    conds["items"]["required"] = sorted(set(conds["items"]["required"]) | {"type", "status"})
    s["properties"]["attributes"]["maxProperties"] = MAX_ATTRIBUTES
    return s


def _q(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in sorted(values)) + "]"


def validation_rules() -> list[Rule]:
    """CEL rules mirroring ``QuantumBackendSpec._cross_checks`` and the key validators."""
    rules = [
        Rule(
            rule=f"self.metadata.name.matches({json.dumps(_anchored(DNS_LABEL_RE))}) && "
            f"size(self.metadata.name) <= {MAX_NAME_LEN}",
            message=f"metadata.name must be a DNS label (lowercase letters, digits, '-') of at "
            f"most {MAX_NAME_LEN} characters: device IDs append -lane-<n>. Use e.g. "
            "ibm-torino for resourceId ibm_torino",
            scope="root",
        ),
        Rule(
            rule=f"!has(self.access) || self.access != '{AccessMode.NODE_BOUND.value}' || "
            "(has(self.nodeSelector) && size(self.nodeSelector) > 0)",
            message="nodeSelector: a node-bound backend needs a nodeSelector naming the nodes "
            "that reach the QPU (or set access: shared)",
            field_path=".nodeSelector",
            reason="FieldValueRequired",
        ),
        Rule(
            rule=f"self.all(k, k.matches({json.dumps(_anchored(CONFIG_KEY_RE))}))",
            message="config: keys are unprefixed upper-case QRMI names, e.g. QRMI_IBM_QCS_ENDPOINT",
            scope="spec.config",
        ),
        Rule(
            rule=f"self.all(k, !k.matches({json.dumps(SECRET_LOOKING_RE.pattern)}) && "
            "k != 'PASQAL_USERNAME')",
            message="config: a credential key (…APIKEY, …TOKEN, …SECRET, …PASSWORD, "
            "…ACCESS_KEY, …CLIENT_ID) belongs in the Secret named by credentialsSecretRef, "
            "never in config",
            scope="spec.config",
        ),
        Rule(
            rule="self.all(k, k.matches("
            + json.dumps(_anchored(LABEL_KEY_RE))
            + ") && size(k) <= 316)",
            message="nodeSelector: keys must be valid label keys ([prefix/]name)",
            scope="spec.nodeSelector",
        ),
    ]
    needs_creds = [t.value for t, i in PROFILES.items() if i.credential_options]
    rules.append(
        Rule(
            rule=f"!(self.type in {_q(needs_creds)}) || has(self.credentialsSecretRef)",
            message="credentialsSecretRef: this type needs vendor credentials; reference the "
            "Secret that holds them (keys as in the type's docs, e.g. QRMI_IBM_QCS_IAM_APIKEY)",
            field_path=".credentialsSecretRef",
            reason="FieldValueRequired",
        )
    )
    for rtype in ResourceType:
        t = PROFILES[rtype]
        if t.allowed_resource_ids is not None:
            rules.append(
                Rule(
                    rule=f"self.type != '{rtype.value}' || self.resourceId in "
                    f"{_q(t.allowed_resource_ids)}",
                    message=f"resourceId: {rtype.value} needs a device type as resource id "
                    f"({', '.join(sorted(t.allowed_resource_ids))})",
                    field_path=".resourceId",
                )
            )
        if t.required_config:
            rules.append(
                Rule(
                    rule=f"self.type != '{rtype.value}' || (has(self.config) && "
                    f"{_q(t.required_config)}.all(k, k in self.config))",
                    message=f"config: type {rtype.value} needs "
                    f"{', '.join(sorted(t.required_config))}; add them to spec.config",
                    field_path=".config",
                    reason="FieldValueRequired",
                )
            )
        allowed = f"k in {_q(t.known_config)}" if t.known_config else "false"
        if t.open_prefix:
            allowed = f"k.startsWith('{t.open_prefix}')" + (
                f" || {allowed}" if t.known_config else ""
            )
        listed = ", ".join(sorted(t.known_config)) or f"keys starting with {t.open_prefix}"
        rules.append(
            Rule(
                rule=f"self.type != '{rtype.value}' || !has(self.config) || "
                f"self.config.all(k, {allowed})",
                message=f"config: unknown key for type {rtype.value}; allowed: {listed}",
                field_path=".config",
                reason="FieldValueInvalid",
            )
        )
    return rules


def _attach_rules(spec: dict[str, Any], rules: Sequence[Rule]) -> None:
    for r in rules:
        if r.scope == "spec":
            target = spec
        elif r.scope.startswith("spec."):
            target = spec["properties"][r.scope.removeprefix("spec.")]
        else:
            continue
        target.setdefault("x-kubernetes-validations", []).append(r.to_api())


def openapi_schema() -> dict[str, Any]:
    """The whole object's ``openAPIV3Schema``."""
    return object_schema(
        _text(QuantumBackend.__doc__ or KIND)
        + " The QRMI resource id, type and non-secret config are in spec; credentials stay "
        "in the Secret named by spec.credentialsSecretRef.",
        spec_schema(),
        status_schema(),
        [r for r in validation_rules() if r.scope == "root"],
    )


def printer_columns() -> list[dict[str, Any]]:
    ready = '.status.conditions[?(@.type=="Ready")]'
    return [
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Access", "type": "string", "jsonPath": ".spec.access"},
        {"name": "Qubits", "type": "integer", "jsonPath": ".status.qubits"},
        {"name": "Lanes", "type": "integer", "jsonPath": ".spec.lanes"},
        {"name": "Ready", "type": "string", "jsonPath": f"{ready}.status"},
        {"name": "Reason", "type": "string", "jsonPath": f"{ready}.reason", "priority": 1},
        {"name": "Resource", "type": "string", "jsonPath": ".spec.resourceId", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def definition(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: Sequence[str],
    scope: str,
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    subresources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A CustomResourceDefinition of our group with one served, stored version."""
    version: dict[str, Any] = {
        "name": API_VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if subresources is not None:
        version["subresources"] = subresources
    version["additionalPrinterColumns"] = columns
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "qpu-k8s", "app.kubernetes.io/part-of": "qpu-k8s"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [version],
        },
    }


def crd() -> dict[str, Any]:
    """The QuantumBackend CustomResourceDefinition object."""
    return definition(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        scope="Cluster",
        schema=openapi_schema(),
        columns=printer_columns(),
        subresources={"status": {}},
    )


_HEADER = (
    "# GENERATED by `python -m qpu_k8s.operator.crd` from {sources}. Do not edit: change the"
    " models and regenerate (a test fails when stale).\n"
)
OUTPUT = "quantumbackends.yaml"


def render(obj: Mapping[str, Any] | None = None, sources: str = "") -> str:
    """The CRD file: the QuantumBackend CRD unless another CRD object is given."""
    if obj is None:
        obj, sources = crd(), "qpu_k8s/core/model.py and\n# operator/status.py"
    body = yaml.safe_dump(dict(obj), sort_keys=False, width=100, allow_unicode=True)
    return _HEADER.format(sources=sources) + body


def rendered_files() -> dict[str, str]:
    """Every CRD file this module writes, by file name."""
    from qpu_k8s.operator import budget_crd, usage_crd  # they build on this module's helpers

    return {
        OUTPUT: render(),
        budget_crd.OUTPUT: render(
            budget_crd.crd(), "qpu_k8s/core/budget.py and\n# operator/budget_crd.py"
        ),
        usage_crd.OUTPUT: render(
            usage_crd.crd(), "qpu_k8s/core/usage.py and\n# operator/usage_crd.py"
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("manifests/crd"),
        help="where to write (default: manifests/crd, run from a checkout's root)",
    )
    args = parser.parse_args(argv)
    stale = 0
    for name, text in rendered_files().items():
        path = args.output_dir / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"stale CRD: {path}; run `python -m qpu_k8s.operator.crd`", file=sys.stderr)
                stale = 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
