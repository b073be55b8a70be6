"""The QuantumUsage record: one QPU acquisition, accounted to the workload that held it.

A node agent writes one record when it has released an acquisition (device plugin: the
container's session; DRA driver: a claim's device). The record is a namespaced object in
the qpu-k8s namespace, not in the workload's: a namespace admin (or the deletion of a CI
namespace) must not be able to erase the namespace's usage; ``spec.namespace`` and the
:data:`NAMESPACE_LABEL` say whose it is. The spec is written once (CEL keeps it immutable).

Vendor figures are what the vendor's API reports for the session, fetched at release;
when it reports none, ``vendor.state`` is ``NotReported`` and no figure is set: absent
figures are never written as zero. Nothing here is a credential: the session id is the
vendor's public handle of the session (IBM shows it in its console), never an API key.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from qpu_k8s.core.names import API_GROUP, API_VERSION, USAGE_KIND

NAMESPACE_LABEL = f"{API_GROUP}/namespace"
BACKEND_LABEL = f"{API_GROUP}/backend"
AGENT_LABEL = f"{API_GROUP}/agent"
# RFC 1123 label for the workload namespace / a pod / a claim name (DNS subdomain).
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
MAX_JOBS_LISTED = 50


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Agent(StrEnum):
    DEVICE_PLUGIN = "device-plugin"
    DRA = "dra"


class ReportState(StrEnum):
    REPORTED = "Reported"
    NOT_REPORTED = "NotReported"


class Owner(_Model):
    """The controller of the pod (ownerReferences with controller: true)."""

    kind: Annotated[str, Field(min_length=1, max_length=63, description="e.g. Job.")]
    name: Annotated[str, Field(min_length=1, max_length=253)]


class VendorJob(_Model):
    """One vendor job run in the session, as the vendor reports it."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    quantum_seconds: Annotated[
        float | None, Field(default=None, ge=0, description="QPU time the vendor counts.")
    ] = None
    status: Annotated[str, Field(default="", max_length=64)] = ""


class VendorUsage(_Model):
    """What the vendor's API reports about the session, fetched at release."""

    state: Annotated[
        ReportState,
        Field(description="Reported, or NotReported when the vendor's API gave no figures."),
    ]
    reason: Annotated[
        str,
        Field(default="", max_length=1024, description="Why nothing was reported."),
    ] = ""
    session_usage_seconds: Annotated[
        float | None,
        Field(
            default=None,
            ge=0,
            description="The vendor's usage figure of the session itself (IBM: elapsed_time "
            "of GET /sessions/{id}, the time the QPU was committed to the session).",
        ),
    ] = None
    quantum_seconds: Annotated[
        float | None,
        Field(default=None, ge=0, description="Sum of the jobs' QPU seconds."),
    ] = None
    job_count: Annotated[
        int | None, Field(default=None, ge=0, description="Jobs run in the session.")
    ] = None
    jobs: list[VendorJob] = Field(
        default_factory=list,
        max_length=MAX_JOBS_LISTED,
        description=f"The first {MAX_JOBS_LISTED} jobs; jobCount counts them all.",
    )

    @classmethod
    def not_reported(cls, reason: str) -> VendorUsage:
        return cls(state=ReportState.NOT_REPORTED, reason=reason[:1024])


class UsageSpec(_Model):
    """One QPU acquisition accounted to the workload that held it; written once."""

    namespace: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            pattern=_DNS_LABEL,
            description="The workload's namespace (the record itself lives with qpu-k8s).",
        ),
    ]
    pod: Annotated[str, Field(default="", max_length=253, description="The pod that held it.")]
    pod_uid: Annotated[str, Field(default="", max_length=64)] = ""
    owner: Annotated[
        Owner | None, Field(default=None, description="The pod's controller, e.g. a Job.")
    ] = None
    service_account: Annotated[str, Field(default="", max_length=253)] = ""
    claim: Annotated[
        str, Field(default="", max_length=253, description="The ResourceClaim (DRA).")
    ] = ""
    claim_uid: Annotated[str, Field(default="", max_length=64)] = ""
    agent: Annotated[Agent, Field(description="Which node agent acquired it.")]
    node: Annotated[str, Field(min_length=1, max_length=253)]
    backend: Annotated[
        str,
        Field(min_length=1, max_length=63, pattern=_DNS_LABEL, description="QuantumBackend."),
    ]
    resource_id: Annotated[
        str, Field(min_length=1, max_length=128, description="QRMI resource id.")
    ]
    resource_type: Annotated[str, Field(min_length=1, max_length=64)]
    acquisition_id: Annotated[
        str, Field(min_length=1, max_length=253, description="The agent's own id of it.")
    ]
    session_id: Annotated[
        str,
        Field(
            default="",
            max_length=253,
            description="The vendor's session id (session-based types only).",
        ),
    ] = ""
    acquired_at: Annotated[
        str, Field(json_schema_extra={"format": "date-time"}, description="RFC 3339.")
    ]
    released_at: Annotated[
        str, Field(json_schema_extra={"format": "date-time"}, description="RFC 3339.")
    ]
    wall_seconds: Annotated[
        float, Field(ge=0, description="releasedAt - acquiredAt: how long it was held.")
    ]
    release_reason: Annotated[str, Field(default="", max_length=1024)] = ""
    vendor: Annotated[VendorUsage, Field(description="The vendor's own figures.")]


def rfc3339(at: float) -> str:
    """Millisecond precision: a record must match the vendor's times within a second."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_name(agent: Agent, node: str, acquisition_id: str) -> str:
    """Deterministic, so that a create repeated after a crash finds the first one."""
    digest = hashlib.sha256(f"{agent.value}/{node}/{acquisition_id}".encode()).hexdigest()[:20]
    return f"{'dp' if agent is Agent.DEVICE_PLUGIN else 'dra'}-{digest}"


def usage_object(spec: UsageSpec, namespace: str) -> dict[str, object]:
    """The QuantumUsage object for ``spec``, to be created in ``namespace``."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": USAGE_KIND,
        "metadata": {
            "name": record_name(spec.agent, spec.node, spec.acquisition_id),
            "namespace": namespace,
            "labels": {
                NAMESPACE_LABEL: spec.namespace,
                BACKEND_LABEL: spec.backend,
                AGENT_LABEL: spec.agent.value,
                "app.kubernetes.io/part-of": "qpu-k8s",
            },
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
