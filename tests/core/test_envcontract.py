"""The pod environment matches the paper's Slurm contract, which qrmi itself parses."""

from __future__ import annotations

from typing import Any

import pytest
import qrmi

from qpu_k8s.core.envcontract import EnvContractError, Grant, render, shell_name
from qpu_k8s.core.model import parse_backend


def _backend(doc: dict[str, Any], name: str = "ibm-torino", rid: str = "ibm_torino") -> Any:
    doc = {**doc, "name": name, "spec": {**doc["spec"], "resourceId": rid}}
    return parse_backend(doc)


def test_render_contract(ibm_doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    b = _backend(ibm_doc)
    job = render([Grant(b, "session-1", {"QRMI_IBM_QCS_IAM_APIKEY": "apikey-xyz"})])
    env = job.env
    assert env["QRMI_JOB_QPU_RESOURCES"] == "ibm_torino"
    assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    assert env["SLURM_JOB_QPU_RESOURCES"] == env["QRMI_JOB_QPU_RESOURCES"]
    assert env["ibm_torino_QRMI_JOB_ACQUISITION_TOKEN"] == "session-1"
    assert env["ibm_torino_QRMI_IBM_QCS_ENDPOINT"] == "http://127.0.0.1:1/api/v1"
    assert env["ibm_torino_QRMI_IBM_QCS_IAM_APIKEY"] == "apikey-xyz"
    assert job.secret_names == {"ibm_torino_QRMI_IBM_QCS_IAM_APIKEY"}
    assert "apikey-xyz" not in job.public().values()
    # qrmi's own parser of the job environment agrees with what we rendered.
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert qrmi.get_job_qpu_resources_and_types() == (
        ["ibm_torino"],
        ["ibm-quantum-compute-service"],
    )


def test_two_backends_and_delimiter(ibm_doc: dict[str, Any]) -> None:
    a = _backend(ibm_doc)
    b = _backend(ibm_doc, "ibm-kyiv", "ibm_kyiv")
    env = render([Grant(a, "s1"), Grant(b, "s2")], delimiter=";").env
    assert env["QRMI_JOB_QPU_RESOURCES"] == "ibm_torino;ibm_kyiv"
    assert env["QRMI_LIST_DELIMITER"] == ";"
    assert env["ibm_kyiv_QRMI_JOB_ACQUISITION_TOKEN"] == "s2"


def test_non_shell_id_gets_alias_for_public_keys_only(ibm_doc: dict[str, Any]) -> None:
    b = _backend(ibm_doc, "my-qpu", "my-qpu.1")
    job = render([Grant(b, "s", {"QRMI_IBM_QCS_IAM_APIKEY": "secret-value"})])
    assert job.env["my-qpu.1_QRMI_JOB_ACQUISITION_TOKEN"] == "s"
    assert job.env["my_qpu_1_QRMI_JOB_ACQUISITION_TOKEN"] == "s"
    assert "my_qpu_1_QRMI_IBM_QCS_IAM_APIKEY" not in job.env
    assert job.env["QRMI_JOB_QPU_RESOURCES"] == "my-qpu.1"


@pytest.mark.parametrize(
    ("rid", "name"), [("ibm_torino", "ibm_torino"), ("a-b.c", "a_b_c"), ("7q", "_7q")]
)
def test_shell_name(rid: str, name: str) -> None:
    assert shell_name(rid) == name


def test_duplicate_resource_id_rejected(ibm_doc: dict[str, Any]) -> None:
    a = _backend(ibm_doc)
    b = _backend(ibm_doc, "other", "ibm_torino")
    with pytest.raises(EnvContractError, match=r"distinct spec\.resourceId"):
        render([Grant(a, "1"), Grant(b, "2")])


def test_unprefixed_pasqal_credentials() -> None:
    b = parse_backend(
        {
            "name": "fresnel",
            "spec": {
                "resourceId": "FRESNEL",
                "type": "pasqal-cloud",
                "config": {"QRMI_PASQAL_CLOUD_PROJECT_ID": "p"},
                "credentialsSecretRef": {"name": "pasqal"},
            },
        }
    )
    job = render([Grant(b, "t", {"PASQAL_USERNAME": "u1", "PASQAL_PASSWORD": "pw"})])
    assert job.env["PASQAL_PASSWORD"] == "pw"
    assert {"PASQAL_PASSWORD", "FRESNEL_PASQAL_PASSWORD"} <= job.secret_names
