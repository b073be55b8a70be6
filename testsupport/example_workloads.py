"""The example pods and Job in ``manifests/examples/{pods,jobs}``, built from one place.

Their Python is the paper's scripts in ``qpu_k8s/examples/`` (mounted from a ConfigMap), their image
and names come from the chart's defaults, so the YAML never drifts from the code the tests
run. ``python -m testsupport.packaging render`` writes them; a test fails on drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from testsupport import REPO

CHART = REPO / "charts" / "qpu-k8s"
EXAMPLES = REPO / "qpu_k8s" / "examples"
PODS_DIR = REPO / "manifests" / "examples" / "pods"
JOBS_DIR = REPO / "manifests" / "examples" / "jobs"

SCRIPTS = ("qiskit_bell.py", "pulser_bell.py")
SCRIPTS_CONFIGMAP = "qpu-k8s-paper-scripts"
EXAMPLE_LABELS = {"app.kubernetes.io/part-of": "qpu-k8s-examples"}
# A path inside the example containers (an emptyDir), not on this machine.
CONTAINER_TMP = "/tmp"


def chart_defaults() -> dict[str, Any]:
    """Image, resource and driver names as the chart's defaults give them."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tag = values["image"]["tag"] or chart["appVersion"]
    repo = values["image"]["repository"]
    return {
        "image": f"{repo}:{tag}",
        "emulator_image": f"{repo}:{tag}-emulator",
        "resource_name": values["resourceName"],
        "driver_name": values["driverName"],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the scripts) as literal blocks, and no anchors: readable YAML."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(header: str, docs: list[dict[str, Any]]) -> str:
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=100)
    return header + body


def scripts_configmap() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SCRIPTS_CONFIGMAP, "labels": dict(EXAMPLE_LABELS)},
        "data": {name: (EXAMPLES / name).read_text() for name in SCRIPTS},
    }


def _container(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    """A hardened container: non-root, read-only root, no capabilities, scratch /tmp."""
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": command,
        # Qiskit and Pulser may write caches under $HOME; the root filesystem is read-only.
        "env": [
            {"name": "HOME", "value": CONTAINER_TMP},
            {"name": "MPLCONFIGDIR", "value": f"{CONTAINER_TMP}/mpl"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "scripts", "mountPath": "/examples", "readOnly": True},
            {"name": "tmp", "mountPath": CONTAINER_TMP},
        ],
    }
    container.update(extra)
    return container


def _pod_spec(containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": [
            {"name": "scripts", "configMap": {"name": SCRIPTS_CONFIGMAP}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    spec.update(extra)
    return spec


def bell_qiskit_pod() -> dict[str, Any]:
    d = chart_defaults()
    resources = {
        "requests": {"cpu": "100m", "memory": "512Mi"},
        "limits": {d["resource_name"]: 1, "memory": "1Gi"},
    }
    container = _container(
        "bell",
        d["emulator_image"],
        ["python", "/examples/qiskit_bell.py", "--shots", "1000"],
        resources=resources,
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bell-qiskit", "labels": dict(EXAMPLE_LABELS)},
        "spec": _pod_spec([container]),
    }


def show_env_pod() -> dict[str, Any]:
    d = chart_defaults()
    container = _container(
        "env",
        d["image"],
        ["qpu-k8s", "env"],
        resources={
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {d["resource_name"]: 1, "memory": "128Mi"},
        },
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "show-qpu-env", "labels": dict(EXAMPLE_LABELS)},
        "spec": _pod_spec([container]),
    }


def claim_template(name: str, technology: str) -> dict[str, Any]:
    d = chart_defaults()
    selector = f'device.attributes["{d["driver_name"]}"].technology == "{technology}"'
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "labels": dict(EXAMPLE_LABELS)},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "qpu",
                            "exactly": {
                                "deviceClassName": d["driver_name"],
                                "allocationMode": "ExactCount",
                                "count": 1,
                                "selectors": [{"cel": {"expression": selector}}],
                            },
                        }
                    ]
                }
            }
        },
    }


def paper_job() -> dict[str, Any]:
    """One Job, two containers: each gets its own QPU through its own claim, so the Qiskit
    script sees only the superconducting QPU and the Pulser script only the neutral-atom one."""
    d = chart_defaults()
    resources = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    qiskit = _container(
        "qiskit",
        d["emulator_image"],
        ["python", "/examples/qiskit_bell.py", "--shots", "1000"],
        resources={**resources, "claims": [{"name": "superconducting"}]},
    )
    pulser = _container(
        "pulser",
        d["emulator_image"],
        ["python", "/examples/pulser_bell.py", "--runs", "500"],
        resources={**resources, "claims": [{"name": "neutral-atom"}]},
    )
    spec = _pod_spec(
        [qiskit, pulser],
        resourceClaims=[
            {"name": "superconducting", "resourceClaimTemplateName": "superconducting-qpu"},
            {"name": "neutral-atom", "resourceClaimTemplateName": "neutral-atom-qpu"},
        ],
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "paper-scripts", "labels": dict(EXAMPLE_LABELS)},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 900,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": dict(EXAMPLE_LABELS)}, "spec": spec},
        },
    }


_HEADER = """\
# Generated by `python -m testsupport.packaging render` from {scripts};
# do not edit (a test fails on drift).
# {what}
#   kubectl apply -f manifests/examples/{path}
"""


def files() -> dict[Path, str]:
    """Every example workload file and its content."""
    cm = scripts_configmap()
    return {
        PODS_DIR / "bell-qiskit.yaml": _dump(
            _HEADER.format(
                scripts="qpu_k8s/examples/qiskit_bell.py and the chart's defaults",
                what="A pod that asks the device plugin for one QPU and runs a Bell pair with "
                "Qiskit\n# (needs an IBM QuantumBackend, e.g. the emulator's). Then: "
                "kubectl logs bell-qiskit",
                path="pods/bell-qiskit.yaml",
            ),
            [cm, bell_qiskit_pod()],
        ),
        PODS_DIR / "show-qpu-env.yaml": _dump(
            _HEADER.format(
                scripts="the chart's defaults",
                what="A pod that gets one QPU and prints the QRMI environment it was given "
                "(credentials masked).\n# Then: kubectl logs show-qpu-env",
                path="pods/show-qpu-env.yaml",
            ),
            [show_env_pod()],
        ),
        JOBS_DIR / "paper-scripts.yaml": _dump(
            _HEADER.format(
                scripts="examples/*_bell.py and the chart's defaults",
                what="A Job running the paper's Qiskit and Pulser scripts, each container "
                "with its own DRA claim\n# (a superconducting and a neutral-atom QPU). Then: "
                "kubectl logs job/paper-scripts --all-containers",
                path="jobs/paper-scripts.yaml",
            ),
            [
                cm,
                claim_template("superconducting-qpu", "superconducting"),
                claim_template("neutral-atom-qpu", "neutral-atom"),
                paper_job(),
            ],
        ),
    }
