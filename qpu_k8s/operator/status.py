"""The QuantumBackend status as a pydantic model: what the operator writes, and the CRD's schema.

The spec's schema comes from :mod:`qpu_k8s.core.model`; the status's from here, so the CRD's
``status`` schema, the writer and the tests share one definition. Nothing in it is ever a
credential: it holds probe outcomes, counts and device attributes only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from qpu_k8s.core.values import AttributeValue

REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
MAX_MESSAGE = 32768


class ConditionType(StrEnum):
    """The conditions every QuantumBackend carries."""

    READY = "Ready"
    ACCESSIBLE = "Accessible"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Condition(_Model):
    """One condition in the metav1.Condition shape (kubectl wait --for=condition=Ready works)."""

    type: Annotated[ConditionType, Field(description="Ready, Accessible or Degraded.")]
    status: Annotated[ConditionStatus, Field(description="True, False or Unknown.")]
    reason: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            pattern=REASON_PATTERN,
            description="CamelCase reason, e.g. SecretNotFound, AuthenticationFailed, "
            "ProbeTimeout, BackendOffline.",
        ),
    ]
    message: Annotated[
        str,
        Field(
            default="",
            max_length=MAX_MESSAGE,
            description="What happened and what to do about it.",
        ),
    ] = ""
    last_transition_time: Annotated[
        str,
        Field(
            json_schema_extra={"format": "date-time"},
            description="When the status last changed (RFC 3339).",
        ),
    ]
    observed_generation: Annotated[
        int | None,
        Field(default=None, ge=0, description="metadata.generation this condition is about."),
    ] = None


class BackendStatus(_Model):
    """Observed state of a QuantumBackend, written by the operator after every probe."""

    observed_generation: Annotated[
        int | None,
        Field(default=None, ge=0, description="The metadata.generation last reconciled."),
    ] = None
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, description="Ready, Accessible, Degraded."
    )
    state: Annotated[
        str | None,
        Field(
            default=None,
            max_length=32,
            description="Last probe outcome: online, offline, paused, unreachable, timeout, "
            "auth, error, no-credentials or invalid-spec.",
        ),
    ] = None
    qubits: Annotated[
        int | None, Field(default=None, ge=0, description="Qubits (or atoms) from target().")
    ] = None
    technology: Annotated[
        str | None, Field(default=None, max_length=64, description="e.g. superconducting.")
    ] = None
    vendor: Annotated[str | None, Field(default=None, max_length=64, description="e.g. ibm.")] = (
        None
    )
    pending_jobs: Annotated[
        int | None, Field(default=None, ge=0, description="Vendor queue length, when reported.")
    ] = None
    last_probe_time: Annotated[
        str | None,
        Field(
            default=None,
            json_schema_extra={"format": "date-time"},
            description="When the backend was last probed (RFC 3339).",
        ),
    ] = None
    last_target_time: Annotated[
        str | None,
        Field(
            default=None,
            json_schema_extra={"format": "date-time"},
            description="When target() last answered (RFC 3339): until it has, the "
            "backend's devices are not published as schedulable (their attributes would "
            "lack qubits and quality figures).",
        ),
    ] = None
    probe_latency_ms: Annotated[
        int | None,
        Field(default=None, ge=0, description="Duration of the last probe in milliseconds."),
    ] = None
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict,
        description="Device attributes as published in ResourceSlices, quality figures "
        "from the last target() included (values: bool, int or string).",
    )
    live_acquisitions: Annotated[
        int,
        Field(
            default=0,
            ge=0,
            description="Shared ResourceClaims of this backend that pods hold now (each one "
            "QRMI acquisition on its node). Per-pod claims and device-plugin allocations "
            "are node-local and not counted here.",
        ),
    ] = 0
    shared_claims: Annotated[
        int,
        Field(default=0, ge=0, description="Shared ResourceClaims the operator manages."),
    ] = 0

    def condition(self, ctype: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype), None)

    def to_api(self) -> dict[str, Any]:
        """The JSON written to ``.status`` (camelCase, no nulls, no empty strings).

        Empty strings are left out: the k8s-local 1.20 build decodes ``""`` in a custom
        resource as null and then refuses it as "must be of type string"; an absent
        optional field means the same to every reader.
        """
        out: dict[str, Any] = _no_empty(
            self.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        return out

    @classmethod
    def from_api(cls, data: Any) -> BackendStatus:
        """Parse what is stored in ``.status``; unreadable data gives an empty status."""
        try:
            return cls.model_validate(data if isinstance(data, dict) else {})
        except ValueError:
            return cls.model_validate({})


def _no_empty(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _no_empty(v) for k, v in node.items() if v != ""}
    if isinstance(node, list):
        return [_no_empty(v) for v in node]
    return node
