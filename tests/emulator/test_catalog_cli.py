"""The catalogue, the light import path, the CLI process and the admin API client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qpu_k8s.emulator import CATALOG, Emulator, EmulatorClient, Vendor, catalog
from qpu_k8s.emulator.config import EmulatorConfig
from testsupport.waiting import wait_for


def test_catalogue_matches_the_served_data() -> None:
    import pulser.devices

    from qpu_k8s.emulator import ibm_data

    for spec in catalog.by_vendor(Vendor.IBM):
        conf = ibm_data.configuration(spec)
        assert conf["n_qubits"] == spec.qubits, spec.name
        assert conf["backend_name"] == spec.name
        assert len(ibm_data.properties(spec)["qubits"]) == spec.qubits
    for spec in catalog.by_vendor(Vendor.PASQAL):
        assert getattr(pulser.devices, spec.source).max_atom_num == spec.qubits, spec.name
    assert {s.qubits for s in CATALOG if s.vendor == Vendor.IBM} >= {5, 7, 133}
    assert {"FRESNEL", "EMU_MPS", "EMU_FREE"} <= set(catalog.names())


def test_unknown_backend_error_lists_the_names() -> None:
    with pytest.raises(KeyError, match="fake_manila"):
        catalog.get("ibm_nowhere")
    with pytest.raises(KeyError, match="ibm_nowhere"):
        EmulatorConfig(backends=("ibm_nowhere",))


def test_import_is_light() -> None:
    code = (
        "import sys, qpu_k8s.emulator, qpu_k8s.emulator.cli;"
        "from qpu_k8s.emulator import catalog;"
        "print([m for m in ('qiskit', 'pulser', 'aiohttp', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_repr_hides_credentials() -> None:
    config = EmulatorConfig(api_keys=frozenset({"s3cret-key"}), pasqal_tokens=frozenset({"tok-9"}))
    assert "s3cret-key" not in repr(config)
    assert "tok-9" not in repr(config)


@pytest.fixture
def cli_emulator(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], EmulatorClient, Path]]:
    ready = tmp_path / "port"
    log = (tmp_path / "emulator.log").open("w")
    env = {**os.environ, "QPU_K8S_EMULATOR_API_KEY": "cli-secret-key"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qpu_k8s.emulator",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--backend",
            "fake_manila",
            "--backend",
            "FRESNEL",
            "--log-level",
            "DEBUG",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    port = int(wait_for(lambda: ready.exists() and ready.read_text().strip(), timeout=30))
    client = EmulatorClient(
        f"http://127.0.0.1:{port}",
        EmulatorConfig(api_keys=frozenset({"cli-secret-key"}), backends=("fake_manila", "FRESNEL")),
    )
    yield proc, client, tmp_path / "emulator.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log.close()


def test_cli_process_admin_api_and_sigterm(
    cli_emulator: tuple[subprocess.Popen[str], EmulatorClient, Path],
) -> None:
    import qrmi

    proc, client, log_path = cli_emulator
    assert client.health()
    res = qrmi.QuantumResource.from_config(
        "fake_manila", qrmi.ResourceType.IBMQuantumComputeService, client.qrmi_config("fake_manila")
    )
    token = res.acquire()
    assert [s["id"] for s in client.sessions(open_only=True)] == [token]

    client.set_online("fake_manila", False, reason="drained")
    status = res.status()
    assert status.status == qrmi.ResourceStatusCode.Offline
    assert status.status_reason == "drained"
    client.set_fault("error5xx", "fake_manila", status=502)
    with pytest.raises(qrmi.QrmiError, match="502"):
        res.status()
    assert client.clear_faults() == 2
    with pytest.raises(RuntimeError, match="'kind'"):
        client.set_fault("melt")

    res.release(token)
    assert client.sessions(open_only=True) == []
    assert client.state()["session_counts"] == {"fake_manila": {"open": 0, "closed": 1}}
    client.reset()
    assert client.sessions() == []
    with pytest.raises(ValueError, match="not served"):
        client.ibm_config("fake_torino")

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 5
    log = log_path.read_text()
    assert "GET /api/v1/backends" in log  # the debug request log is there...
    assert "cli-secret-key" not in log  # ...and the credential is not
    assert "Bearer" not in log


def test_cli_rejects_bad_flags(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qpu_k8s.emulator", "--api-key-file", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "--api-key-file" in proc.stderr


def test_admin_http_api_validation(emu: Emulator) -> None:
    import urllib.error
    import urllib.request

    url = f"{emu.url}/_emulator/faults"
    req = urllib.request.Request(
        url, data=json.dumps({"kind": "hang", "seconds": "soon"}).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400
    assert "'seconds'" in info.value.read().decode()
