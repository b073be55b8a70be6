"""QRMI resource types as data: which config keys each type takes and which are secrets.

Every agent decides what may go in a ConfigMap, what must come from a Secret and what the
pod's environment gets from this one table, so a new vendor is a new row, not new code paths.
Key names were read from the qrmi 0.26 Rust core (see shared/notes/vendors.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class ResourceType(StrEnum):
    """The QRMI resource type strings used in ``QRMI_JOB_QPU_TYPES``."""

    IBM_QUANTUM_COMPUTE_SERVICE = "ibm-quantum-compute-service"
    QISKIT_RUNTIME_SERVICE = "qiskit-runtime-service"
    IBM_QUANTUM_SYSTEM = "ibm-quantum-system"
    PASQAL_CLOUD = "pasqal-cloud"
    PASQAL_LOCAL = "pasqal-local"
    ALICE_BOB_FELIS = "alice-bob-felis"
    IQM_SERVER = "iqm-server"
    OQTOPUS = "oqtopus"


@dataclass(frozen=True)
class TypeInfo:
    """What we know about one QRMI resource type."""

    vendor: str
    technology: str
    required_config: frozenset[str]
    optional_config: frozenset[str]
    secret_keys: frozenset[str]
    # Alternatives: at least one of these groups must be fully present in the credentials.
    credential_options: tuple[frozenset[str], ...] = ()
    # Types whose acquire really locks something (a vendor session); others return a dummy.
    session_based: bool = False
    # Unknown keys with this prefix are accepted (vendors whose key set we have not pinned).
    open_prefix: str | None = None
    # pasqal-cloud: the QRMI resource id must be one of these device types.
    allowed_resource_ids: frozenset[str] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def known_config(self) -> frozenset[str]:
        return self.required_config | self.optional_config


def _ibm_runtime(prefix: str) -> TypeInfo:
    p = f"QRMI_IBM_{prefix}_"
    return TypeInfo(
        vendor="ibm",
        technology="superconducting",
        required_config=frozenset({p + "ENDPOINT", p + "IAM_ENDPOINT", p + "SERVICE_CRN"}),
        optional_config=frozenset(
            {
                p + "SESSION_MODE",
                p + "SESSION_MAX_TTL",
                p + "TIMEOUT_SECONDS",
                "QRMI_JOB_TIMEOUT_SECONDS",
            }
        ),
        secret_keys=frozenset({p + "IAM_APIKEY"}),
        credential_options=(frozenset({p + "IAM_APIKEY"}),),
        session_based=True,
    )


PASQAL_DEVICE_TYPES = frozenset({"FRESNEL", "FRESNEL_CAN1", "EMU_MPS", "EMU_FREE", "EMU_FRESNEL"})

TYPES: dict[ResourceType, TypeInfo] = {
    ResourceType.IBM_QUANTUM_COMPUTE_SERVICE: _ibm_runtime("QCS"),
    ResourceType.QISKIT_RUNTIME_SERVICE: _ibm_runtime("QRS"),
    ResourceType.IBM_QUANTUM_SYSTEM: TypeInfo(
        vendor="ibm",
        technology="superconducting",
        required_config=frozenset(
            {
                "QRMI_IBM_QS_ENDPOINT",
                "QRMI_IBM_QS_IAM_ENDPOINT",
                "QRMI_IBM_QS_SERVICE_CRN",
                "QRMI_IBM_QS_S3_ENDPOINT",
                "QRMI_IBM_QS_S3_BUCKET",
                "QRMI_IBM_QS_S3_REGION",
            }
        ),
        optional_config=frozenset({"QRMI_IBM_QS_S3_ENDPOINT_FOR_QSAPI"}),
        secret_keys=frozenset(
            {
                "QRMI_IBM_QS_IAM_APIKEY",
                "QRMI_IBM_QS_AWS_ACCESS_KEY_ID",
                "QRMI_IBM_QS_AWS_SECRET_ACCESS_KEY",
            }
        ),
        credential_options=(
            frozenset(
                {
                    "QRMI_IBM_QS_IAM_APIKEY",
                    "QRMI_IBM_QS_AWS_ACCESS_KEY_ID",
                    "QRMI_IBM_QS_AWS_SECRET_ACCESS_KEY",
                }
            ),
        ),
    ),
    ResourceType.PASQAL_CLOUD: TypeInfo(
        vendor="pasqal",
        technology="neutral-atom",
        required_config=frozenset({"QRMI_PASQAL_CLOUD_PROJECT_ID"}),
        optional_config=frozenset(
            {"QRMI_PASQAL_CLOUD_BASE_URL", "QRMI_PASQAL_CLOUD_AUTH_ENDPOINT"}
        ),
        secret_keys=frozenset(
            {
                "QRMI_PASQAL_CLOUD_AUTH_TOKEN",
                "QRMI_PASQAL_CLOUD_CLIENT_ID",
                "QRMI_PASQAL_CLOUD_CLIENT_SECRET",
                "PASQAL_USERNAME",
                "PASQAL_PASSWORD",
            }
        ),
        credential_options=(
            frozenset({"QRMI_PASQAL_CLOUD_AUTH_TOKEN"}),
            frozenset({"QRMI_PASQAL_CLOUD_CLIENT_ID", "QRMI_PASQAL_CLOUD_CLIENT_SECRET"}),
            frozenset({"PASQAL_USERNAME", "PASQAL_PASSWORD"}),
        ),
        allowed_resource_ids=PASQAL_DEVICE_TYPES,
    ),
    ResourceType.PASQAL_LOCAL: TypeInfo(
        vendor="pasqal",
        technology="neutral-atom",
        required_config=frozenset({"QRMI_WARDEN_URL"}),
        optional_config=frozenset({"QRMI_URL", "QRMI_JOB_UID", "QRMI_JOB_ID"}),
        secret_keys=frozenset(),
        session_based=True,
    ),
    ResourceType.ALICE_BOB_FELIS: TypeInfo(
        vendor="alice-bob",
        technology="cat-qubit",
        required_config=frozenset({"QRMI_AB_FELIS_BASE_ENDPOINT"}),
        optional_config=frozenset(),
        secret_keys=frozenset({"QRMI_AB_FELIS_API_KEY"}),
        credential_options=(frozenset({"QRMI_AB_FELIS_API_KEY"}),),
    ),
    ResourceType.IQM_SERVER: TypeInfo(
        vendor="iqm",
        technology="superconducting",
        required_config=frozenset({"QRMI_IQM_ISA_ENDPOINT"}),
        optional_config=frozenset(),
        secret_keys=frozenset({"QRMI_IQM_ISA_TOKEN"}),
        credential_options=(frozenset({"QRMI_IQM_ISA_TOKEN"}),),
    ),
    ResourceType.OQTOPUS: TypeInfo(
        vendor="oqtopus",
        technology="superconducting",
        required_config=frozenset(),
        optional_config=frozenset(),
        secret_keys=frozenset(),
        open_prefix="QRMI_OQTOPUS_",
    ),
}

# Key names that look like credentials: refused in non-secret config for every type, so a
# credential pasted into a ConfigMap-bound field is caught even for open-prefix vendors.
SECRET_LOOKING_RE = re.compile(r"(APIKEY|API_KEY|TOKEN|SECRET|PASSWORD|ACCESS_KEY|CLIENT_ID)$")


def looks_secret(key: str) -> bool:
    """True for key names that must only ever come from a Secret."""
    return bool(SECRET_LOOKING_RE.search(key)) or key in {"PASQAL_USERNAME"}


def info(rtype: ResourceType) -> TypeInfo:
    return TYPES[rtype]


# qrmi opens IBM sessions with this max_ttl unless *_SESSION_MAX_TTL is configured.
DEFAULT_IBM_SESSION_MAX_TTL = 28800


def held_at_most(rtype: ResourceType, config: dict[str, str]) -> int | None:
    """How long the vendor holds an acquisition nobody releases, in seconds.

    ``0``: nothing is held (the type's acquire returns a placeholder token); a number: the
    session's max TTL, after which the vendor closes it by itself; ``None``: not known
    (the vendor decides). This bounds what an acquisition whose token was lost (the agent
    died between the vendor's answer and its checkpoint write) can cost.
    """
    t = info(rtype)
    if not t.session_based:
        return 0
    for key in ("QRMI_IBM_QCS_SESSION_MAX_TTL", "QRMI_IBM_QRS_SESSION_MAX_TTL"):
        if key in t.known_config:
            raw = config.get(key, "")
            return int(raw) if raw.strip().isdigit() else DEFAULT_IBM_SESSION_MAX_TTL
    return None
