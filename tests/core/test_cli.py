"""Every sub-command has --help, and the pod-side/admin helpers do their job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qpu_k8s.cli.commands import COMMANDS, build_parser, main
from qpu_k8s.cli.podenv import describe


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: qpu-k8s" in capsys.readouterr().out


def test_console_script_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qpu_k8s.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


def test_validate(
    tmp_path: Path, ibm_doc: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cr = {
        "apiVersion": "quantum.example.com/v1alpha1",
        "kind": "QuantumBackend",
        "metadata": {"name": ibm_doc["name"]},
        "spec": ibm_doc["spec"],
    }
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cr))
    assert main(["validate", str(good)]) == 0
    cr["spec"]["lanes"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cr))
    assert main(["validate", str(bad)]) == 1
    assert "spec.lanes" in capsys.readouterr().err


def test_validate_warns_about_the_deprecated_runtime_service_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ("ENDPOINT", "IAM_ENDPOINT", "SERVICE_CRN")
    cr = {
        "apiVersion": "quantum.example.com/v1alpha1",
        "kind": "QuantumBackend",
        "metadata": {"name": "legacy"},
        "spec": {
            "resourceId": "ibm_torino",
            "type": "qiskit-runtime-service",
            "config": {f"QRMI_IBM_QRS_{k}": f"https://example.com/{k}" for k in keys},
            "credentialsSecretRef": {"name": "ibm", "namespace": "qpu-system"},
        },
    }
    path = tmp_path / "legacy.yaml"
    path.write_text(yaml.safe_dump(cr))
    assert main(["validate", str(path)]) == 0  # still valid: a warning, not an error
    out = capsys.readouterr()
    assert "QuantumBackend legacy ok" in out.out
    assert "warning: QuantumBackend legacy: spec.type qiskit-runtime-service is deprecated" in (
        out.err
    )
    assert "2026-11-21" in out.err
    assert "Use spec.type ibm-quantum-compute-service" in out.err


def test_podenv_masks_credentials() -> None:
    env = {
        "QRMI_JOB_QPU_RESOURCES": "ibm_torino",
        "QRMI_JOB_QPU_TYPES": "ibm-quantum-compute-service",
        "ibm_torino_QRMI_JOB_ACQUISITION_TOKEN": "sess",
        "ibm_torino_QRMI_IBM_QCS_IAM_APIKEY": "hidden-key",
    }
    info = describe(env)
    text = json.dumps(info)
    assert "hidden-key" not in text
    (res,) = info["resources"]  # type: ignore[misc]
    assert res["acquired"] is True
    assert res["settings"]["QRMI_JOB_ACQUISITION_TOKEN"] == "sess"
