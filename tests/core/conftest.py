"""Builders for valid QuantumBackends that tests mutate."""

from __future__ import annotations

import copy
from typing import Any

import pytest

IBM_SPEC: dict[str, Any] = {
    "name": "ibm-torino",
    "spec": {
        "resourceId": "ibm_torino",
        "type": "ibm-quantum-compute-service",
        "config": {
            "QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:1/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": "http://127.0.0.1:1",
            "QRMI_IBM_QCS_SERVICE_CRN": "crn:v1:emulator",
        },
        "credentialsSecretRef": {"name": "ibm-creds"},
        "lanes": 2,
    },
}


@pytest.fixture
def ibm_doc() -> dict[str, Any]:
    return copy.deepcopy(IBM_SPEC)
