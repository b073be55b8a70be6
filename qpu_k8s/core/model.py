"""The QuantumBackend model shared by every agent and by the CRD schema.

One pydantic model is the single source of truth: the operator renders the CRD's OpenAPI
schema from it, the node agents parse their ConfigMap with it, and every validation error
names the field (as a JSON path in the CR's camelCase) and says how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from qpu_k8s.core.names import KIND
from qpu_k8s.core.values import ATTR_NAME_RE, MAX_ATTRIBUTE_STRING, AttributeValue
from qpu_k8s.core.vendors import ResourceType, looks_secret, profile

# A device ID is "<name>-lane-<n>" and must stay a DNS label (<= 63 chars).
MAX_LANES = 64
_LANE_SUFFIX_LEN = len("-lane-") + len(str(MAX_LANES - 1))
MAX_NAME_LEN = 63 - _LANE_SUFFIX_LEN
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIG_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
RESOURCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class InvalidBackendError(ValueError):
    """A QuantumBackend (or a config file of them) failed validation.

    ``problems`` holds one ``(field path, message)`` per error so callers can turn them into
    conditions or CLI output; ``str()`` is a readable multi-line summary.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid QuantumBackend"]
        lines += [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class AccessMode(StrEnum):
    """How nodes reach the QPU (the paper's two access models)."""

    NODE_BOUND = "node-bound"
    SHARED = "shared"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


class SecretRef(_Model):
    """Reference to the Secret holding the vendor credentials (e.g. QRMI_IBM_QCS_IAM_APIKEY)."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            description="Name of the Secret. Its keys are QRMI credential keys, e.g. "
            "QRMI_IBM_QCS_IAM_APIKEY or QRMI_PASQAL_CLOUD_AUTH_TOKEN.",
        ),
    ]
    namespace: Annotated[
        str | None,
        Field(
            default=None,
            max_length=63,
            description="Namespace of the Secret; defaults to the namespace qpu-k8s runs in.",
        ),
    ] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", v):
            raise ValueError(
                f"{v!r} is not a valid Secret name: use lowercase letters, digits, '-' and '.'"
            )
        return v


class QuantumBackendSpec(_Model):
    """Desired state of one QPU reachable through QRMI."""

    resource_id: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            description="QRMI resource id: the vendor's backend name (e.g. ibm_torino), or for "
            "pasqal-cloud the device type (FRESNEL, EMU_MPS, ...). Pods see it in "
            "QRMI_JOB_QPU_RESOURCES.",
        ),
    ]
    type: Annotated[
        ResourceType,
        Field(
            description="QRMI resource type. qiskit-runtime-service is deprecated (IBM's "
            "transition ended 2026-11-21): use ibm-quantum-compute-service with QRMI_IBM_QCS_* "
            "keys."
        ),
    ]
    config: Annotated[
        dict[str, str],
        Field(
            default_factory=dict,
            description="Non-secret QRMI configuration keys without the resource prefix, e.g. "
            "QRMI_IBM_QCS_ENDPOINT. Credentials belong in credentialsSecretRef.",
        ),
    ]
    credentials_secret_ref: Annotated[
        SecretRef | None,
        Field(default=None, description="Secret with the vendor credentials (QRMI keys)."),
    ] = None
    access: Annotated[
        AccessMode,
        Field(
            default=AccessMode.SHARED,
            description="node-bound: only nodes matching nodeSelector reach the QPU. "
            "shared: a network-attached/cloud QPU usable from every node.",
        ),
    ] = AccessMode.SHARED
    node_selector: Annotated[
        dict[str, str],
        Field(
            default_factory=dict,
            description="Node labels (all must match) of the nodes that reach this QPU. "
            "Required for node-bound; optional for shared.",
        ),
    ]
    lanes: Annotated[
        int,
        Field(
            default=1,
            ge=1,
            le=MAX_LANES,
            description="How many pods may hold this QPU at once (one device per lane).",
        ),
    ] = 1
    probe_interval_seconds: Annotated[
        int,
        Field(default=60, ge=5, le=86400, description="Seconds between health probes."),
    ] = 60
    attributes: Annotated[
        dict[str, AttributeValue],
        Field(
            default_factory=dict,
            description="Device attributes that override or extend the probed ones "
            "(e.g. technology, qubits), as published in ResourceSlices.",
        ),
    ]
    acquire_before_bind: Annotated[
        bool | None,
        Field(
            default=None,
            description="DRA: acquire the QPU before the pod is bound (binding conditions), so "
            "a failed acquire sends the claim to another QPU instead of leaving the pod stuck "
            "on its node. Node-bound backends only for now. Unset: the DRA driver's default "
            "(chart dra.acquireBeforeBind, off).",
        ),
    ] = None

    @field_validator("resource_id")
    @classmethod
    def _resource_id(cls, v: str) -> str:
        if not RESOURCE_ID_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a QRMI resource id: use letters, digits, '_', '.', ':' or '-' "
                "and start with a letter or digit"
            )
        return v

    @field_validator("config")
    @classmethod
    def _config_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not CONFIG_KEY_RE.fullmatch(key):
                raise ValueError(
                    f"key {key!r} is not a QRMI config key: use the unprefixed upper-case "
                    "name, e.g. QRMI_IBM_QCS_ENDPOINT"
                )
            if looks_secret(key):
                raise ValueError(
                    f"key {key!r} is a credential: put it in the Secret named by "
                    "credentialsSecretRef, never in config"
                )
            if len(value) > 4096:
                raise ValueError(f"value of {key!r} is longer than 4096 characters")
        return v

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_KEY_RE.fullmatch(key) or len(key) > 316:
                raise ValueError(f"{key!r} is not a valid label key")
            if len(value) > 63 or not re.fullmatch(
                r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value
            ):
                raise ValueError(f"value {value!r} of label {key!r} is not a valid label value")
        return v

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        for key, value in v.items():
            if not ATTR_NAME_RE.fullmatch(key):
                raise ValueError(
                    f"attribute name {key!r} must be a C identifier of at most 32 characters "
                    "(DRA attribute rules)"
                )
            if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_STRING:
                raise ValueError(
                    f"attribute {key!r}: string values are limited to "
                    f"{MAX_ATTRIBUTE_STRING} characters"
                )
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        t = profile(self.type)
        if t.allowed_resource_ids is not None and self.resource_id not in t.allowed_resource_ids:
            allowed = ", ".join(sorted(t.allowed_resource_ids))
            raise ValueError(
                f"resourceId: {self.type.value} needs a device type as resource id "
                f"({allowed}), got {self.resource_id!r}"
            )
        if self.access is AccessMode.NODE_BOUND and not self.node_selector:
            raise ValueError(
                "nodeSelector: a node-bound backend needs a nodeSelector naming the nodes "
                "that reach the QPU (or set access: shared)"
            )
        unknown = sorted(
            k
            for k in self.config
            if k not in t.known_config and not (t.open_prefix and k.startswith(t.open_prefix))
        )
        if unknown:
            allowed = ", ".join(sorted(t.known_config)) or f"keys starting with {t.open_prefix}"
            raise ValueError(
                f"config: unknown key(s) {', '.join(unknown)} for type {self.type.value}; "
                f"allowed: {allowed}"
            )
        missing = sorted(t.required_config - self.config.keys())
        if missing:
            raise ValueError(
                f"config: type {self.type.value} needs {', '.join(missing)}; add them to "
                "spec.config"
            )
        if t.credential_options and self.credentials_secret_ref is None:
            raise ValueError(
                f"credentialsSecretRef: type {self.type.value} needs credentials "
                f"({' or '.join('+'.join(sorted(o)) for o in t.credential_options)}); "
                "reference the Secret that holds them"
            )
        return self


class QuantumBackend(_Model):
    """A named QPU: the Kubernetes object name plus its spec.

    The object name (DNS label, used for device IDs and slices) is kept apart from the QRMI
    resource id (the vendor's backend name, which may hold '_' and upper case).
    """

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LEN)]
    spec: QuantumBackendSpec

    @field_validator("name", mode="before")
    @classmethod
    def _name_length(cls, v: Any) -> Any:
        if isinstance(v, str) and len(v) > MAX_NAME_LEN:
            raise ValueError(
                f"{len(v)} characters, at most {MAX_NAME_LEN} allowed: device IDs "
                f"(<name>-lane-<n>) must stay within 63 characters; use a shorter name"
            )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS_LABEL_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a DNS label: use lowercase letters, digits and '-' "
                "(e.g. ibm-torino for resourceId ibm_torino)"
            )
        return v

    def device_ids(self) -> list[str]:
        return [device_id(self.name, lane) for lane in range(self.spec.lanes)]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], source: str | None = None) -> QuantumBackend:
        """Parse a QuantumBackend custom resource (``metadata.name`` + ``spec``)."""
        meta = obj.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, Mapping) else None
        return parse_backend({"name": name, "spec": obj.get("spec")}, source or f"{KIND}/{name}")


def device_id(name: str, lane: int) -> str:
    """The device ID of one lane: ``<name>-lane-<n>`` (a DNS label of at most 63 chars)."""
    return f"{name}-lane-{lane}"


def split_device_id(dev: str) -> tuple[str, int]:
    """Inverse of :func:`device_id`; raises ValueError for IDs we did not make."""
    name, sep, lane = dev.rpartition("-lane-")
    if not sep or not lane.isdigit():
        raise ValueError(f"{dev!r} is not a qpu-k8s device ID (<backend>-lane-<n>)")
    return name, int(lane)


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            camel = to_camel(item) if "_" in item and item.islower() else item
            parts.append(("." if parts else "") + camel)
    return "".join(parts) or "(root)"


def _problems(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for e in err.errors(include_url=False, include_input=False):
        loc = tuple(x for x in e["loc"] if x not in {"function-after[_cross_checks()]"})
        msg = e["msg"].removeprefix("Value error, ")
        # Cross-field errors carry their field at the start of the message.
        head, _, rest = msg.partition(": ")
        if not loc and rest and re.fullmatch(r"[a-zA-Z.]+", head):
            loc, msg = ("spec", head), rest
        elif loc and loc[-1] == "spec" and rest and re.fullmatch(r"[a-zA-Z.]+", head):
            loc, msg = (*loc, head), rest
        if e["type"] == "extra_forbidden":
            msg = "unknown field: remove it or check its spelling (fields are camelCase)"
        path = _path(loc)
        out.append((f"{prefix}{path}" if prefix else path, msg))
    return out


def parse_backend(data: Any, source: str = "QuantumBackend") -> QuantumBackend:
    """Validate one backend given as ``{"name": ..., "spec": {...}}``."""
    try:
        return QuantumBackend.model_validate(data)
    except ValidationError as err:
        raise InvalidBackendError(source, _problems(err)) from None


class BackendConfig(_Model):
    """The node agents' config file: the backends the operator rendered into a ConfigMap."""

    backends: list[QuantumBackend] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        for b in self.backends:
            if b.name in seen:
                raise ValueError(f"backends: name {b.name!r} appears twice; names must be unique")
            seen.add(b.name)
        return self


MAX_CONFIG_BYTES = 4 * 1024 * 1024


def load_backend_config(path: Path) -> BackendConfig:
    """Read and validate the node agents' backend config (YAML or JSON)."""
    return parse_backend_config_bytes(path.read_bytes(), str(path))


def parse_backend_config_bytes(raw: bytes, source: str) -> BackendConfig:
    """Validate the node agents' backend config as read from ``source`` (a file, or the
    ConfigMap as the apiserver has it)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidBackendError(source, [("(file)", f"larger than {MAX_CONFIG_BYTES} bytes")])
    return parse_backend_config(raw.decode("utf-8", errors="replace"), source)


# libyaml's safe loader and dumper when PyYAML was built with it (the wheels are): the same
# documents and text as the pure-Python ones, 5x faster. With 1000 backends the config is
# ~0.7 MB, rendered by the operator on every change and parsed by each node agent.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def parse_backend_config(text: str, source: str = "config") -> BackendConfig:
    try:
        data = yaml.load(text, Loader=_YAML_LOADER) if text.strip() else {}  # noqa: S506 (safe)
    except yaml.YAMLError as err:
        raise InvalidBackendError(source, [("(file)", f"not valid YAML/JSON: {err}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidBackendError(source, [("(file)", "must be a mapping with a 'backends' list")])
    try:
        return BackendConfig.model_validate(data)
    except ValidationError as err:
        raise InvalidBackendError(source, _problems(err)) from None


def dump_backend_config(backends: Iterable[QuantumBackend]) -> str:
    """Render backends as the node agents' config file (non-secret data only, by construction)."""
    doc = {
        "backends": [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in backends]
    }
    return yaml.dump(doc, Dumper=_YAML_DUMPER, sort_keys=True)
