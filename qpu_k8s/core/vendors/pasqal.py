"""Pasqal: the cloud (``pasqal-cloud``) and on-premise warden (``pasqal-local``) types.

For ``pasqal-cloud`` the QRMI resource id must be a device type (qrmi fails on first use
otherwise). ``target()`` answers with the pulser abstract-repr device specs, from which
:func:`target_attributes` takes the atom count, register dimensions and minimum spacing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qpu_k8s.core.values import AttributeValue, finite
from qpu_k8s.core.vendors.profile import ResourceType, VendorProfile

DEVICE_TYPES = frozenset({"FRESNEL", "FRESNEL_CAN1", "EMU_MPS", "EMU_FREE", "EMU_FRESNEL"})


def pulser_specs(specs: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Figures from a pulser abstract-repr device (what Pasqal's ``target()`` returns)."""
    out: dict[str, AttributeValue] = {}
    n = specs.get("max_atom_num")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        out["qubits"] = n
    dims = specs.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool):
        out["dimensions"] = dims
    dist = finite(specs.get("min_atom_distance"))  # micrometres in pulser
    if dist is not None and dist > 0:
        out["minAtomDistanceNm"] = round(dist * 1000)
    return out


def _pulser_device(target: Any, resource_id: str | None) -> Mapping[str, Any] | None:
    """The pulser device dict inside a Pasqal ``target()`` answer, whatever the wrapping.

    qrmi 0.26 hands back the vendor's ``data``: a ``{"device_type", "specs"}`` record (or a
    list of them, from the public-specs route), where ``specs`` is a JSON *string*.
    """
    if isinstance(target, str):
        try:
            target = json.loads(target)
        except json.JSONDecodeError:
            return None
    if isinstance(target, list):
        records = [r for r in target if isinstance(r, Mapping)]
        chosen = [r for r in records if r.get("device_type") == resource_id] or records[:1]
        return _pulser_device(chosen[0], resource_id) if chosen else None
    if not isinstance(target, Mapping):
        return None
    if "max_atom_num" in target or "channels" in target:
        return target
    for key in ("specs", "value", "data"):
        if key in target:
            return _pulser_device(target[key], resource_id)
    return None


def target_attributes(target: Mapping[str, Any], resource_id: str) -> dict[str, AttributeValue]:
    """Attributes from the device specs; ``resource_id`` picks the record from a list."""
    device = _pulser_device(target, resource_id)
    return pulser_specs(device) if device is not None else {}


def _emulated(resource_id: str) -> bool:
    return resource_id.startswith("EMU_")


PROFILES = (
    VendorProfile(
        type=ResourceType.PASQAL_CLOUD,
        vendor="pasqal",
        technology="neutral-atom",
        qrmi_type="PasqalCloud",
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
        allowed_resource_ids=DEVICE_TYPES,
        parse_target=target_attributes,
        simulator=_emulated,
    ),
    VendorProfile(
        type=ResourceType.PASQAL_LOCAL,
        vendor="pasqal",
        technology="neutral-atom",
        qrmi_type="PasqalLocal",
        required_config=frozenset({"QRMI_WARDEN_URL"}),
        optional_config=frozenset({"QRMI_URL", "QRMI_JOB_UID", "QRMI_JOB_ID"}),
        secret_keys=frozenset(),
        session_based=True,
        # The warden takes no credentials: its session token alone submits work and ends the
        # session, so it is a bearer secret and only its fingerprint is ever shown.
        token_is_public_id=False,
        parse_target=target_attributes,
        simulator=_emulated,
    ),
)
