"""Fuzzing the parsers every agent feeds untrusted input to: they fail only with our error.

A config file, ConfigMap or CR of any shape must give InvalidBackendError naming a field,
never another exception (a crash loop in a DaemonSet) and never a partially applied state.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpu_k8s.model import InvalidBackendError, QuantumBackend, parse_backend_config

VALID: dict[str, Any] = {
    "name": "emu",
    "spec": {
        "resourceId": "fake_manila",
        "type": "ibm-quantum-compute-service",
        "config": {
            "QRMI_IBM_QCS_ENDPOINT": "http://127.0.0.1:1/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": "http://127.0.0.1:1",
            "QRMI_IBM_QCS_SERVICE_CRN": "crn",
        },
        "credentialsSecretRef": {"name": "emu"},
    },
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "name",
    "resourceId",
    "type",
    "config",
    "credentialsSecretRef",
    "access",
    "nodeSelector",
    "lanes",
    "probeIntervalSeconds",
    "attributes",
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(text: str) -> None:
    try:
        cfg = parse_backend_config(text, "fuzz")
    except InvalidBackendError as err:
        problems = err.problems
    else:
        for b in cfg.backends:
            assert isinstance(b, QuantumBackend)
            assert all(len(d) <= 63 for d in b.device_ids())
        return
    assert problems, "an error must name at least one field"
    for path, msg in problems:
        assert path
        assert msg


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    _check(text)


@FUZZ
@given(json_values)
def test_arbitrary_documents(doc: Any) -> None:
    _check(yaml.safe_dump({"backends": doc}))


@FUZZ
@given(st.sampled_from(FIELDS), json_values)
def test_one_field_replaced(field: str, value: Any) -> None:
    doc = copy.deepcopy(VALID)
    if field == "name":
        doc["name"] = value
    else:
        doc["spec"][field] = value
    _check(yaml.safe_dump({"backends": [doc]}))
