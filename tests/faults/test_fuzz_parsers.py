"""Fuzzing the parsers every agent feeds untrusted input to: they fail only with our error.

A config file, ConfigMap or CR of any shape must give InvalidBackendError naming a field,
never another exception (a crash loop in a DaemonSet) and never a partially applied state.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qpu_k8s.core.model import InvalidBackendError, QuantumBackend, parse_backend_config

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


# -- claim parameters (untrusted: any user writes them into a ResourceClaim) ------------------
@FUZZ
@given(json_values)
def test_claim_parameters_fail_only_with_our_error(raw: Any) -> None:
    from qpu_k8s.dra.params import InvalidParametersError, parse_parameters

    where = "spec.devices.config[0].opaque.parameters"
    try:
        parse_parameters(raw, where)
    except InvalidParametersError as err:
        message = str(err)
    else:
        return
    assert message.startswith(where)


PARAM_FIELDS = ["apiVersion", "kind", "sessionMode", "sessionMaxTtlSeconds", "credentialsSecretRef"]


@FUZZ
@given(st.dictionaries(st.sampled_from([*PARAM_FIELDS, "x"]), json_values, max_size=6))
def test_claim_parameter_fields_are_named_when_wrong(params: dict[str, Any]) -> None:
    from qpu_k8s.dra.params import InvalidParametersError, effective_parameters

    config = [{"opaque": {"driver": "qpu.quantum.example.com", "parameters": params}}]
    try:
        effective_parameters(config, "qpu", "qpu.quantum.example.com", "spec.devices.config")
    except InvalidParametersError as err:
        message = str(err)
    else:
        return
    assert "spec.devices.config[0].opaque.parameters" in message


# -- checkpoints (a crash, a full disk or another writer may leave anything) ------------------
@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_checkpoint_files_fail_only_with_checkpoint_error(raw: bytes) -> None:
    import tempfile
    from pathlib import Path

    from qpu_k8s.core.checkpoint import CheckpointError, CheckpointFile
    from qpu_k8s.deviceplugin.state import LedgerData

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.json"
        path.write_bytes(raw)
        with contextlib.suppress(CheckpointError):  # nothing else may come out
            CheckpointFile(path, LedgerData).load()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_agents_start_from_any_checkpoint_content(data: Any) -> None:
    """Whatever the state files hold (a journal line, or an earlier version's checkpoint to
    migrate), both agents' state loads: kept, or moved aside."""
    import json
    import tempfile
    from pathlib import Path

    from qpu_k8s.core import journal
    from qpu_k8s.core.checkpoint import _digest
    from qpu_k8s.deviceplugin.state import CHECKPOINT_NAME as DP
    from qpu_k8s.deviceplugin.state import LEGACY_CHECKPOINT as DP_OLD
    from qpu_k8s.deviceplugin.state import Ledger
    from qpu_k8s.dra.state import CHECKPOINT_NAME as DRA
    from qpu_k8s.dra.state import LEGACY_CHECKPOINT as DRA_OLD
    from qpu_k8s.dra.state import StateStore

    payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
    legacy = json.dumps({"version": 1, "checksum": _digest(payload), "data": data})
    ops = [["k", data]]
    line = json.dumps({"ops": ops, "crc": journal._crc(ops)})
    head = json.dumps({"journal": "x", "version": 1})
    for files in ({DP_OLD: legacy, DRA_OLD: legacy}, {DP: f"{head}\n{line}\n", DRA: line}):
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
            led = Ledger(Path(tmp) / DP)
            led.load(0.0)
            led.close()
            store = StateStore(Path(tmp), "boot")
            store.load()
            store.close()


# -- custom resources and flags --------------------------------------------------------------
@FUZZ
@given(json_values, json_values)
def test_custom_resource_objects_fail_only_with_our_error(metadata: Any, spec: Any) -> None:
    try:
        QuantumBackend.from_object({"metadata": metadata, "spec": spec})
    except InvalidBackendError as err:
        problems = err.problems
    else:
        return
    assert problems


@FUZZ
@given(st.text(max_size=120))
def test_node_label_flag(text: str) -> None:
    from qpu_k8s.node.labels import NodeLabelsError, parse_labels

    try:
        parse_labels(text)
    except NodeLabelsError as err:
        message = str(err)
    else:
        return
    assert message.startswith("--node-labels")


# -- names that are not shell identifiers ----------------------------------------------------
@FUZZ
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}", fullmatch=True))
def test_any_resource_id_renders_an_env_a_shell_can_read(rid: str) -> None:
    import re

    from qpu_k8s.core.envcontract import Grant, render, shell_name
    from qpu_k8s.core.model import parse_backend

    alias = shell_name(rid)
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias)
    doc = copy.deepcopy(VALID)
    doc["spec"]["resourceId"] = rid
    backend = parse_backend(doc)
    env = render([Grant(backend, "tok", {"QRMI_IBM_QCS_IAM_APIKEY": "k3y-value"})])
    assert env.env[f"{rid}_QRMI_JOB_ACQUISITION_TOKEN"] == "tok"
    assert env.env[f"{alias}_QRMI_JOB_ACQUISITION_TOKEN"] == "tok"
    # Credentials only under the raw id that qrmi reads, never under the alias.
    assert [k for k, v in env.env.items() if v == "k3y-value"] == [f"{rid}_QRMI_IBM_QCS_IAM_APIKEY"]
