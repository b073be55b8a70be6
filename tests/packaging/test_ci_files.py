"""The kind e2e script, its cluster config and the GitHub workflow, kept correct without a
cluster: shellcheck, structure, and every name they rely on checked against the repo.
(actionlint itself runs in the workflow: its PyPI wrapper downloads the binary at install.)"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testsupport import packaging, tools

WORKFLOW = packaging.REPO / ".github" / "workflows" / "ci.yaml"
E2E = packaging.REPO / "scripts" / "kind" / "e2e.sh"
KIND_CONFIG = packaging.REPO / "scripts" / "kind" / "kind-config.yaml"


def _shellcheck(path: Path, shell: str = "bash") -> subprocess.CompletedProcess[str]:
    try:
        binary = tools.shellcheck()
    except tools.UnsupportedPlatformError as err:
        pytest.skip(str(err))
    return subprocess.run(
        [str(binary), "-s", shell, "-x", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
    )


# --- scripts/kind/e2e.sh -------------------------------------------------------------------


def test_e2e_script_is_clean_bash() -> None:
    assert os.access(E2E, os.X_OK), "e2e.sh must be executable"
    assert E2E.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in E2E.read_text()
    proc = _shellcheck(E2E)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_e2e_uses_files_that_exist() -> None:
    text = E2E.read_text()
    paths = set(re.findall(r"(?:manifests|charts|scripts)/[\w./-]+", text))
    assert {"charts/qpu-k8s", "scripts/kind/kind-config.yaml"} <= paths
    missing = sorted(p for p in paths if not (packaging.REPO / p).exists())
    assert not missing, missing


def test_e2e_names_match_the_chart_and_examples(renders: dict[str, list[dict[str, Any]]]) -> None:
    text = E2E.read_text()
    objs = renders["emulator"]
    backends = {o["metadata"]["name"]: o for o in objs if o["kind"] == "QuantumBackend"}
    for name in re.findall(r"quantumbackend/([\w-]+)", text):
        assert name in backends, name
    ibm = re.search(r"^IBM_BACKEND=(\S+)$", text, re.MULTILINE)
    assert ibm is not None
    assert ibm.group(1) in {b["spec"]["resourceId"] for b in backends.values()}
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert "qpu-k8s-emulator" in services
    assert services["qpu-k8s-emulator"]["spec"]["ports"][0]["port"] == 8080
    assert '"${RELEASE}-emulator"' in text
    assert re.search(r"^RELEASE=qpu-k8s$", text, re.MULTILINE)
    # The example workloads the script waits for.
    pods = packaging.objects((packaging.MANIFESTS / "examples/pods/bell-qiskit.yaml").read_text())
    assert "pod/bell-qiskit" in text
    assert any(o["kind"] == "Pod" and o["metadata"]["name"] == "bell-qiskit" for o in pods)
    job = packaging.objects((packaging.MANIFESTS / "examples/jobs/paper-scripts.yaml").read_text())
    (spec,) = [o for o in job if o["kind"] == "Job"]
    names = {c["name"] for c in spec["spec"]["template"]["spec"]["containers"]}
    assert names == set(re.findall(r"job/paper-scripts -c (\w+)", text))


def test_e2e_helm_settings_exist_in_values() -> None:
    values = yaml.safe_load((packaging.CHART / "values.yaml").read_text())
    for setting in re.findall(r"--set ([\w.]+)=", E2E.read_text()):
        node: Any = values
        for key in setting.split("."):
            assert isinstance(node, dict), setting
            assert key in node, f"--set {setting}: no such value"
            node = node[key]


# --- scripts/kind/kind-config.yaml ---------------------------------------------------------


def test_kind_config_turns_on_dra_and_cdi() -> None:
    cfg = yaml.safe_load(KIND_CONFIG.read_text())
    assert cfg["kind"] == "Cluster"
    assert cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    gates = cfg["featureGates"]
    assert gates["DynamicResourceAllocation"] is True
    assert gates["DRAExtendedResource"] is True
    (patch,) = cfg["containerdConfigPatches"]
    assert re.search(r'\[plugins\."io\.containerd\.grpc\.v1\.cri"\]\s+enable_cdi = true', patch)
    assert "/var/run/cdi" in patch
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1
    assert "worker" in roles
    allowed = {"kind", "apiVersion", "name", "featureGates", "runtimeConfig", "networking"}
    allowed |= {"nodes", "containerdConfigPatches", "kubeadmConfigPatches"}
    assert set(cfg) <= allowed


# --- .github/workflows/ci.yaml -------------------------------------------------------------


def _workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def test_workflow_structure() -> None:
    wf = _workflow()
    triggers = wf[True]  # YAML 1.1 reads the key `on` as a boolean
    assert {"push", "pull_request"} <= set(triggers)
    assert wf["permissions"] == {"contents": "read"}
    jobs = wf["jobs"]
    assert set(jobs) == {"test", "e2e"}
    assert jobs["e2e"]["needs"] == "test"
    for name, job in jobs.items():
        assert job["runs-on"].startswith("ubuntu-"), name
        assert 0 < job["timeout-minutes"] <= 90, name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
            if "uses" in step:
                # Pinned to a release (vN or vN.N.N) or a commit, never a branch.
                assert re.fullmatch(
                    r"[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", step["uses"]
                )
    runs = " ".join(s.get("run", "") for job in jobs.values() for s in job["steps"])
    assert "./dev.sh test" in runs
    assert "scripts/kind/e2e.sh" in runs


def test_workflow_runs_things_that_exist() -> None:
    runs = " ".join(s.get("run", "") for j in _workflow()["jobs"].values() for s in j["steps"])
    for script in re.findall(r"(?:\./)?((?:scripts/[\w./-]+\.sh)|dev\.sh)", runs):
        assert (packaging.REPO / script).exists(), script
    for module in re.findall(r"python -m ([\w.]+)", runs):
        if module.startswith("qpu_k8s"):
            assert (packaging.REPO / (module.replace(".", "/") + ".py")).exists(), module
    e2e_env = next(
        s["env"]
        for s in _workflow()["jobs"]["e2e"]["steps"]
        if s.get("run") == "scripts/kind/e2e.sh"
    )
    assert set(e2e_env) <= set(re.findall(r"^#\s+([A-Z_]+)\s", E2E.read_text(), re.MULTILINE))


def test_workflow_run_blocks_pass_shellcheck(tmp_path: Path) -> None:
    for job_name, job in _workflow()["jobs"].items():
        for i, step in enumerate(job["steps"]):
            if "run" not in step:
                continue
            # GitHub expressions are substituted before the shell sees the script.
            body = re.sub(r"\$\{\{[^}]*\}\}", "x", step["run"])
            script = tmp_path / f"{job_name}-{i}.sh"
            script.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + body)
            proc = _shellcheck(script)
            assert proc.returncode == 0, f"{job_name} step {i}:\n{proc.stdout}"
