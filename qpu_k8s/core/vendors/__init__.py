"""The QRMI resource types qpu-k8s knows: one :class:`VendorProfile` per type, in a table.

Adding a vendor: write its profile (config and secret keys from its qrmi implementation,
the qrmi class name, session keys, and a ``target()`` parser if it reports calibration) in
a module here and add it to :data:`PROFILES`. Nothing else branches on vendors.
"""

from __future__ import annotations

from qpu_k8s.core.vendors import ibm, others, pasqal
from qpu_k8s.core.vendors.profile import (
    SECRET_LOOKING_RE,
    ResourceType,
    VendorProfile,
    looks_secret,
    token_fingerprint,
)

PROFILES: dict[ResourceType, VendorProfile] = {
    p.type: p for p in (*ibm.PROFILES, *pasqal.PROFILES, *others.PROFILES)
}
assert set(PROFILES) == set(ResourceType), "every QRMI type has a profile"


def profile(rtype: ResourceType) -> VendorProfile:
    """The profile of a QRMI resource type."""
    return PROFILES[rtype]


__all__ = [
    "PROFILES",
    "SECRET_LOOKING_RE",
    "ResourceType",
    "VendorProfile",
    "looks_secret",
    "profile",
    "token_fingerprint",
]
