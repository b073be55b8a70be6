"""Alice & Bob (Felis), IQM and OQTOPUS: types qrmi 0.26 supports that we publish without
calibration figures (their ``target()`` shapes are not parsed yet; a parser is one function
set as the profile's ``parse_target``)."""

from __future__ import annotations

from qpu_k8s.core.vendors.profile import ResourceType, VendorProfile

PROFILES = (
    VendorProfile(
        type=ResourceType.ALICE_BOB_FELIS,
        vendor="alice-bob",
        technology="cat-qubit",
        qrmi_type="AliceBobFelis",
        required_config=frozenset({"QRMI_AB_FELIS_BASE_ENDPOINT"}),
        optional_config=frozenset(),
        secret_keys=frozenset({"QRMI_AB_FELIS_API_KEY"}),
        credential_options=(frozenset({"QRMI_AB_FELIS_API_KEY"}),),
    ),
    VendorProfile(
        type=ResourceType.IQM_SERVER,
        vendor="iqm",
        technology="superconducting",
        qrmi_type="IQMServer",
        required_config=frozenset({"QRMI_IQM_ISA_ENDPOINT"}),
        optional_config=frozenset(),
        secret_keys=frozenset({"QRMI_IQM_ISA_TOKEN"}),
        credential_options=(frozenset({"QRMI_IQM_ISA_TOKEN"}),),
    ),
    VendorProfile(
        type=ResourceType.OQTOPUS,
        vendor="oqtopus",
        technology="superconducting",
        qrmi_type="OQTOPUS",
        required_config=frozenset(),
        optional_config=frozenset(),
        secret_keys=frozenset(),
        open_prefix="QRMI_OQTOPUS_",
    ),
)
