"""One source of truth: files derived from the chart, the CRD and examples/ never drift."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from testsupport import example_workloads, packaging


def test_derived_files_are_current(helm_bin: Path) -> None:
    stale = [str(p.relative_to(packaging.REPO)) for p in packaging.drifted()]
    assert not stale, (
        f"out of date: {stale}; run `python -m testsupport.packaging render` and commit"
    )


def test_drift_is_detected(helm_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a changed chart value changes the expected manifest."""
    real = packaging.render

    def render_with_other_tag(values: Any = None, **kw: Any) -> str:
        return real({**dict(values or {}), "image": {"tag": "9.9.9"}}, **kw)

    monkeypatch.setattr(packaging, "render", render_with_other_tag)
    stale = packaging.drifted()
    assert packaging.INSTALL_DIR / "qpu-k8s.yaml" in stale


def test_chart_crd_is_the_operator_crd() -> None:
    assert packaging.CRD_CHART_COPY.read_bytes() == packaging.CRD_SOURCE.read_bytes()


def _semantic(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without the labels Helm adds."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in {"labels", "annotations"}}
    return {**obj, "metadata": meta}


def test_chart_deviceclass_is_the_dra_manifest(renders: dict[str, list[dict[str, Any]]]) -> None:
    path = packaging.MANIFESTS / "deviceclass.yaml"
    (expected,) = packaging.objects(path.read_text())
    (chart,) = [o for o in renders["defaults"] if o["kind"] == "DeviceClass"]
    assert _semantic(chart) == _semantic(expected)


def test_chart_admission_policy_is_the_dra_manifest(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    expected = packaging.objects(packaging.VAP_SOURCE.read_text())
    chart = [
        o
        for o in renders["defaults"]
        if o["kind"].startswith("ValidatingAdmissionPolicy")
        and not o["metadata"]["name"].startswith("qpu-budget.")
    ]
    assert [_semantic(o) for o in chart] == [_semantic(o) for o in expected]


def test_admission_policy_follows_the_driver_name(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    vaps = [o for o in renders["custom"] if o["kind"] == "ValidatingAdmissionPolicy"]
    text = json.dumps(vaps)
    assert 'c.opaque.driver == \\"qpu.acme.io\\"' in text
    assert 'deviceClassName == \\"qpu.acme.io\\"' in text, "the budget policy"
    assert '\\"qpu.acme.io/qpu\\" in c.resources.requests' in text, "the budget policy"
    assert 'driver == \\"qpu.quantum.example.com\\"' not in text
    assert "quantum.example.com/qpu" not in text


def test_chart_emulator_backends_are_the_example_pointed_in_cluster(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    example = packaging.objects(packaging.EMULATOR_BACKENDS_SOURCE.read_text())
    chart = [o for o in renders["emulator"] if o["kind"] == "QuantumBackend"]
    url = f"http://qpu-k8s-emulator.{packaging.NAMESPACE}.svc:8080"
    as_text = yaml.safe_dump(example).replace(packaging.EMULATOR_LOCAL_URL, url)
    assert chart == yaml.safe_load(as_text)
    secrets = {o["metadata"]["name"] for o in renders["emulator"] if o["kind"] == "Secret"}
    assert {b["spec"]["credentialsSecretRef"]["name"] for b in chart} <= secrets


def test_example_workloads_run_the_scripts_in_examples() -> None:
    for path in (
        packaging.MANIFESTS / "examples" / "pods",
        packaging.MANIFESTS / "examples" / "jobs",
    ):
        for file in path.glob("*.yaml"):
            for obj in packaging.objects(file.read_text()):
                if obj["kind"] == "ConfigMap":
                    for name, text in obj["data"].items():
                        assert text == (example_workloads.EXAMPLES / name).read_text(), name


def test_example_pods_ask_for_the_chart_resource() -> None:
    d = example_workloads.chart_defaults()
    pod = example_workloads.bell_qiskit_pod()
    assert pod["spec"]["containers"][0]["resources"]["limits"][d["resource_name"]] == 1
    assert pod["spec"]["containers"][0]["image"] == d["emulator_image"]


# --- the image's Python pins ---------------------------------------------------------------


def _pins() -> dict[str, str]:
    out = {}
    for line in packaging.CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_image_constraints_pin_every_dependency_within_pyproject() -> None:
    project = tomllib.loads((packaging.REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    problems = []
    for spec in project["dependencies"] + project["optional-dependencies"]["emulator"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        if name not in pins:
            problems.append(f"{name} is not pinned")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside {req.specifier}")
    assert not problems, (
        "\n".join(problems) + "\nrun `python -m testsupport.packaging lock` and commit"
    )
    assert "qpu-k8s" not in pins
