"""Credentials are complete or rejected by name, and never printed by our logging."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.core import logs
from qpu_k8s.core.credentials import (
    DirectoryCredentials,
    StaticCredentials,
    redact,
    resolve_credentials,
)
from qpu_k8s.core.errors import CredentialsError
from qpu_k8s.core.model import parse_backend


def test_directory_credentials(tmp_path: Path, ibm_doc: dict[str, Any]) -> None:
    d = tmp_path / "ibm-creds"
    d.mkdir()
    (d / "QRMI_IBM_QCS_IAM_APIKEY").write_text("dir-apikey-123\n")
    (d / "unrelated").write_text("x")
    (d / "..data").mkdir()
    creds = resolve_credentials(parse_backend(ibm_doc), DirectoryCredentials(tmp_path))
    assert creds == {"QRMI_IBM_QCS_IAM_APIKEY": "dir-apikey-123"}
    assert redact("key=dir-apikey-123") == "key=[REDACTED]"


def test_missing_secret_names_it(ibm_doc: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"Secret 'ibm-creds'.*QRMI_IBM_QCS_IAM_APIKEY"):
        resolve_credentials(parse_backend(ibm_doc), DirectoryCredentials(tmp_path))


def test_incomplete_secret_lists_keys_not_values(ibm_doc: dict[str, Any]) -> None:
    src = StaticCredentials({"ibm-creds": {"WRONG_KEY": "value-that-must-not-leak"}})
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(parse_backend(ibm_doc), src)
    assert "WRONG_KEY" in str(err.value)
    assert "value-that-must-not-leak" not in str(err.value)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_logs_redact_registered_secrets(fmt: str) -> None:
    StaticCredentials({"s": {"K": "super-secret-token-42"}})
    buf = io.StringIO()
    logs.setup("debug", fmt, stream=buf)
    try:
        log = logging.getLogger("qpu_k8s.test")
        log.info(
            "calling with super-secret-token-42", extra={"header": "Bearer super-secret-token-42"}
        )
        try:
            raise RuntimeError("boom super-secret-token-42")
        except RuntimeError:
            log.exception("failed")
    finally:
        logs.setup("warning", "text")
    out = buf.getvalue()
    assert "super-secret-token-42" not in out
    assert out.count("[REDACTED]") >= 3
    if fmt == "json":
        first = json.loads(out.splitlines()[0])
        assert first["msg"] == "calling with [REDACTED]"
        assert first["logger"] == "qpu_k8s.test"
