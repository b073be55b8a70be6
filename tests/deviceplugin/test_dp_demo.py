"""The README's main job through the device plugin: fake kubelet, real plugin, real script."""

from __future__ import annotations

import io
import json

from qpu_k8s.cli.demo import EXAMPLES
from qpu_k8s.cli.demo_deviceplugin import run_device_plugin_flow
from qpu_k8s.emulator import Emulator
from testsupport.deviceplugin import Layout
from testsupport.emulator import ibm_backend, pasqal_backend


def test_pod_gets_a_qpu_runs_the_example_and_releases_it(emu: Emulator, layout: Layout) -> None:
    layout.write_config(
        [
            ibm_backend(emu, "fake-manila", "fake_manila", lanes=2),
            pasqal_backend(emu, "fresnel", "FRESNEL"),
        ]
    )
    out = io.StringIO()
    result = run_device_plugin_flow(
        emu,
        layout.config,
        layout.root / "demo",
        EXAMPLES / "qiskit_bell.py",
        out,
        backend="fake-manila",
    )
    text = out.getvalue()
    assert result.script_returncode == 0, text
    counts = json.loads(result.script_stdout.strip().splitlines()[-1])["counts"]
    assert sum(counts.values()) == 1000
    assert counts.get("00", 0) + counts.get("11", 0) > 900  # a Bell pair (ideal simulator)
    # The job ran in the session the plugin acquired, which was closed when the pod ended.
    jobs = emu.state.jobs(backend="fake_manila")
    assert [j.session_id for j in jobs] == [result.token]
    assert result.released
    assert result.session_closed_by == "release"
    assert result.public_env["QRMI_JOB_QPU_RESOURCES"] == "fake_manila"
    assert result.secret_names == ["fake_manila_QRMI_IBM_QCS_IAM_APIKEY"]
    for step in ("registered quantum.example.com/qpu", "Allocate → QRMI acquire", "[pod] {",
                 "no longer lists it", "closed (closed by release)"):  # fmt: skip
        assert step in text
    assert emu.config.first_api_key not in text
