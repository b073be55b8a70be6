"""One object per QRMI resource type: everything qpu-k8s knows about that kind of vendor.

A :class:`VendorProfile` says which config keys the type takes and which are credentials
(what may go in a ConfigMap, what must come from a Secret, what a pod's environment
gets), the qrmi class that implements it, whether its acquire holds a session (and how
long the vendor keeps one nobody releases), and how to read its ``target()`` answer into
device attributes. The agents never branch on a vendor: they ask its profile, so a new
vendor is a new profile in the table (``qpu_k8s.core.vendors``), not new code paths.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from qpu_k8s.core.values import AttributeValue


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


TargetParser = Callable[[Mapping[str, Any], str], dict[str, AttributeValue]]


def _no_figures(target: Mapping[str, Any], resource_id: str) -> dict[str, AttributeValue]:
    del target, resource_id
    return {}


def _never(resource_id: str) -> bool:
    del resource_id
    return False


@dataclass(frozen=True)
class VendorProfile:
    """What one QRMI resource type needs and offers."""

    type: ResourceType
    vendor: str
    technology: str
    # Attribute of ``qrmi.ResourceType`` that implements this type.
    qrmi_type: str
    required_config: frozenset[str]
    optional_config: frozenset[str]
    secret_keys: frozenset[str]
    # Alternatives: at least one of these groups must be fully present in the credentials.
    credential_options: tuple[frozenset[str], ...] = ()
    # Whether acquire really locks something (a vendor session); others return a dummy.
    session_based: bool = False
    # Config keys of the session mode and max TTL (per-claim overrides set them).
    session_mode_key: str | None = None
    session_ttl_key: str | None = None
    # The vendor's max TTL of a session when the config sets none.
    default_session_ttl: int | None = None
    # The session mode qrmi uses when the config sets none.
    default_session_mode: str | None = None
    # Session modes for a claim holding all lanes of a QPU device (exclusive) or some of
    # them (shared), under ``--device-model capacity``; None: the config's mode.
    exclusive_session_mode: str | None = None
    shared_session_mode: str | None = None
    # Whether the acquisition token may be shown as it is (claim status): True only where
    # it names a session that nothing can act on without the vendor credentials, which
    # never leave the node agents and the pod. False (the default, so a new vendor is safe
    # until someone checks): the token alone opens, uses or closes the session (it is a
    # bearer secret), so only a fingerprint of it is shown (:func:`token_fingerprint`).
    token_is_public_id: bool = False
    # Unknown keys with this prefix are accepted (vendors whose key set we have not pinned).
    open_prefix: str | None = None
    # When set, the QRMI resource id must be one of these (pasqal-cloud: device types).
    allowed_resource_ids: frozenset[str] | None = None
    # ``target()`` answer -> device attributes (qubits, calibration figures...).
    parse_target: TargetParser = _no_figures
    # Whether a resource id names a simulator rather than hardware.
    simulator: Callable[[str], bool] = _never
    # Non-empty for a type still served but on its way out: what to use instead. Shown as
    # the operator's Degraded condition (and its Warning Event) and in the agents' logs.
    deprecated: str = ""

    @property
    def known_config(self) -> frozenset[str]:
        return self.required_config | self.optional_config

    def target_attributes(
        self, target: Mapping[str, Any] | None, resource_id: str
    ) -> dict[str, AttributeValue]:
        """Device attributes from a ``target()`` answer (``{}`` for none or an unknown shape)."""
        return self.parse_target(target, resource_id) if target else {}

    def held_at_most(self, config: Mapping[str, str]) -> int | None:
        """How long the vendor holds an acquisition nobody releases, in seconds.

        ``0``: nothing is held (the type's acquire returns a placeholder token); a number:
        the session's max TTL, after which the vendor closes it by itself; ``None``: not
        known (the vendor decides). This bounds what an acquisition whose token was lost
        (the agent died between the vendor's answer and its checkpoint write) can cost.
        """
        if not self.session_based:
            return 0
        if self.session_ttl_key is None:
            return None
        raw = config.get(self.session_ttl_key, "")
        return int(raw) if raw.strip().isdigit() else self.default_session_ttl


def token_fingerprint(token: str) -> str:
    """A non-reversible short name of an acquisition token, to correlate without holding it.

    SHA-256 of the token, first 16 hex digits: the session tokens it is used for are
    random identifiers (UUID-sized), far beyond a brute-force search, and 64 bits keep
    collisions out of reach for any one cluster's sessions. Anyone holding the token (the
    node agents, the pod) can compute it to find the claim that holds it.
    """
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]


# Key names that look like credentials: refused in non-secret config for every type, so a
# credential pasted into a ConfigMap-bound field is caught even for open-prefix vendors.
SECRET_LOOKING_RE = re.compile(r"(APIKEY|API_KEY|TOKEN|SECRET|PASSWORD|ACCESS_KEY|CLIENT_ID)$")


def looks_secret(key: str) -> bool:
    """True for key names that must only ever come from a Secret."""
    return bool(SECRET_LOOKING_RE.search(key)) or key in {"PASQAL_USERNAME"}
