"""The job environment a pod's Qiskit/Pulser code reads: the paper's Slurm contract, unchanged.

``QRMIService()`` in the pod reads ``QRMI_JOB_QPU_RESOURCES`` / ``QRMI_JOB_QPU_TYPES`` (or the
legacy ``SLURM_JOB_QPU_*``), then for each resource name ``{name}_{KEY}`` for its config,
credentials and ``{name}_QRMI_JOB_ACQUISITION_TOKEN``.

Names: ``{name}`` is the QRMI resource id (the vendor's backend name), not the Kubernetes
object name. qrmi looks up ``{id}_{KEY}`` verbatim, so those variables are always set under
the raw id. When the id is not a shell identifier (e.g. ``my-qpu``), every character outside
``[A-Za-z0-9_]`` is mapped to ``_`` (and a leading digit gets a ``_`` prefix) and the
non-secret variables are also set under that alias, so shell scripts can read them.

Credentials (``{id}_QRMI_IBM_QCS_IAM_APIKEY`` etc.) are part of the contract because
``QRMIService()`` needs them; each agent chooses the path that carries them (see README:
device-plugin Allocate envs, DRA CDI spec) and never writes them anywhere else.

Admin access (a DRA request with ``adminAccess: true``, for monitoring and calibration
pods) acquires nothing, so it gets a separate, read-only environment
(:func:`render_admin`): the QPU's identity, metadata and status as last probed, and no
token, no credential and none of the variables above, so ``QRMIService()`` in such a pod
finds no resource and cannot submit jobs. Its names:

* ``QPU_ADMIN_ACCESS=true``; ``QPU_ADMIN_RESOURCES`` / ``QPU_ADMIN_TYPES``: the resource
  ids and QRMI types, joined like ``QRMI_JOB_QPU_RESOURCES``;
* per resource id (and its shell alias): ``{id}_QPU_BACKEND`` (the QuantumBackend, whose
  status the operator keeps current: ``kubectl get quantumbackend NAME``),
  ``{id}_QPU_DEVICE`` (the DRA device), ``{id}_QPU_STATUS`` / ``{id}_QPU_STATUS_REASON``
  / ``{id}_QPU_PENDING_JOBS`` / ``{id}_QPU_CHECKED_AT`` (the node's last probe when the pod
  started), and ``{id}_QPU_METADATA``: all of it as JSON, plus the backend's non-secret
  ``config`` (endpoints: where the vendor's status API is).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qpu_k8s.core.model import QuantumBackend

DEFAULT_DELIMITER = ","
TOKEN_KEY = "QRMI_JOB_ACQUISITION_TOKEN"  # noqa: S105 - a variable name, not a value


def shell_name(resource_id: str) -> str:
    """Map a resource id to a shell identifier: ``[^A-Za-z0-9_]`` → ``_``; no leading digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", resource_id)
    return f"_{name}" if name[:1].isdigit() else name


@dataclass(frozen=True)
class Grant:
    """One backend acquired for one container: what the env is rendered from."""

    backend: QuantumBackend
    token: str
    credentials: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobEnv:
    """The rendered environment, with the names whose values are credentials marked."""

    env: dict[str, str]
    secret_names: frozenset[str]

    def public(self) -> dict[str, str]:
        """The variables that may be shown, logged or stored."""
        return {k: v for k, v in self.env.items() if k not in self.secret_names}


class EnvContractError(ValueError):
    """Two grants would write the same variables (e.g. one resource id configured twice)."""


def check(backends: Sequence[QuantumBackend], *, delimiter: str = DEFAULT_DELIMITER) -> None:
    """Raise EnvContractError when these backends cannot share one container's environment.

    Every resource id names its variables once per container, and the list variables are
    joined by ``delimiter``, so ids must be distinct and must not contain it.
    """
    ids = [b.spec.resource_id for b in backends]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise EnvContractError(
            f"resource id(s) {', '.join(dupes)} allocated twice to one container: each "
            "QuantumBackend in a container must have a distinct spec.resourceId"
        )
    if any(delimiter in i for i in ids):
        raise EnvContractError(f"a resource id contains the list delimiter {delimiter!r}")


def render(
    grants: Sequence[Grant],
    *,
    delimiter: str = DEFAULT_DELIMITER,
    include_credentials: bool = True,
) -> JobEnv:
    """Render the job environment for one container holding ``grants``."""
    check([g.backend for g in grants], delimiter=delimiter)
    env: dict[str, str] = {}
    secrets: set[str] = set()
    resources = delimiter.join(g.backend.spec.resource_id for g in grants)
    types = delimiter.join(g.backend.spec.type.value for g in grants)
    env["QRMI_JOB_QPU_RESOURCES"] = resources
    env["QRMI_JOB_QPU_TYPES"] = types
    env["SLURM_JOB_QPU_RESOURCES"] = resources
    env["SLURM_JOB_QPU_TYPES"] = types
    if delimiter != DEFAULT_DELIMITER:
        env["QRMI_LIST_DELIMITER"] = delimiter
    for g in grants:
        rid = g.backend.spec.resource_id
        alias = shell_name(rid)
        public = {**g.backend.spec.config, TOKEN_KEY: g.token}
        for key, value in public.items():
            env[f"{rid}_{key}"] = value
            if alias != rid:
                env[f"{alias}_{key}"] = value
        if include_credentials:
            for key, value in g.credentials.items():
                env[f"{rid}_{key}"] = value
                secrets.add(f"{rid}_{key}")
                if not key.startswith("QRMI_"):
                    # qrmi reads PASQAL_USERNAME/PASSWORD from the unprefixed process env.
                    env[key] = value
                    secrets.add(key)
    return JobEnv(env, frozenset(secrets))


ADMIN_FLAG = "QPU_ADMIN_ACCESS"


@dataclass(frozen=True)
class AdminView:
    """One device a pod holds with admin access: the backend and its last probe."""

    backend: QuantumBackend
    device: str
    status: str
    reason: str = ""
    pending_jobs: int | None = None
    checked_at: str = ""  # RFC 3339; empty: never probed


def render_admin(views: Sequence[AdminView], *, delimiter: str = DEFAULT_DELIMITER) -> JobEnv:
    """The read-only environment of admin-access devices (see the module docstring)."""
    check([v.backend for v in views], delimiter=delimiter)
    env = {
        ADMIN_FLAG: "true",
        "QPU_ADMIN_RESOURCES": delimiter.join(v.backend.spec.resource_id for v in views),
        "QPU_ADMIN_TYPES": delimiter.join(v.backend.spec.type.value for v in views),
    }
    for v in views:
        spec = v.backend.spec
        fields = {
            "BACKEND": v.backend.name,
            "DEVICE": v.device,
            "STATUS": v.status,
            "STATUS_REASON": v.reason,
            "PENDING_JOBS": "" if v.pending_jobs is None else str(v.pending_jobs),
            "CHECKED_AT": v.checked_at,
        }
        metadata = {
            "backend": v.backend.name,
            "device": v.device,
            "resourceId": spec.resource_id,
            "resourceType": spec.type.value,
            "access": spec.access.value,
            "lanes": spec.lanes,
            "config": dict(spec.config),
            "status": v.status,
            "statusReason": v.reason,
            "pendingJobs": v.pending_jobs,
            "checkedAt": v.checked_at,
        }
        fields["METADATA"] = json.dumps(metadata, sort_keys=True)
        for prefix in dict.fromkeys((spec.resource_id, shell_name(spec.resource_id))):
            env.update({f"{prefix}_QPU_{key}": value for key, value in fields.items()})
    return JobEnv(env, frozenset())
