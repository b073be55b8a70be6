"""The chart is the one source of truth: render it, and keep what is derived from it in sync.

Derived files, each checked by ``tests/packaging`` and rewritten by ``render``:
- ``manifests/install/*.yaml``: the chart rendered for ``kubectl apply`` (plus the Namespace),
- ``manifests/examples/pods/*.yaml``, ``manifests/examples/jobs/*.yaml``: example workloads
  whose scripts are the files in ``qpu_k8s/examples/`` (mounted from a ConfigMap), so the YAML runs
  exactly the code the tests run,
- ``charts/qpu-k8s/crds/*.yaml``: byte copies of the operator's generated CRDs
  ``manifests/crd/*.yaml`` (Helm cannot read files outside the chart),
- ``docker/constraints.txt``: every Python package of the images pinned (``lock``).

``python -m testsupport.packaging render|check|lock``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qpu_k8s.core.names import DRIVER_NAME
from testsupport import REPO, example_workloads, tools

CHART = REPO / "charts" / "qpu-k8s"
MANIFESTS = REPO / "manifests"
INSTALL_DIR = MANIFESTS / "install"
CRD_SOURCE = MANIFESTS / "crd" / "quantumbackends.yaml"
CRD_CHART_COPY = CHART / "crds" / "quantumbackends.yaml"
USAGE_CRD_SOURCE = MANIFESTS / "crd" / "quantumusages.yaml"
USAGE_CRD_CHART_COPY = CHART / "crds" / "quantumusages.yaml"
BUDGET_CRD_SOURCE = MANIFESTS / "crd" / "quantumbudgets.yaml"
BUDGET_CRD_CHART_COPY = CHART / "crds" / "quantumbudgets.yaml"
CONSTRAINTS = REPO / "docker" / "constraints.txt"
VAP_SOURCE = MANIFESTS / "validatingadmissionpolicy-claim-parameters.yaml"
VAP_TEMPLATE = CHART / "templates" / "generated-admission-policy.yaml"
EMULATOR_BACKENDS_SOURCE = MANIFESTS / "examples" / "backends" / "emulator.yaml"
EMULATOR_BACKENDS_TEMPLATE = CHART / "templates" / "generated-emulator-backends.yaml"
# What the sources say that the chart makes configurable.
EMULATOR_LOCAL_URL = "http://127.0.0.1:18080"

RELEASE = "qpu-k8s"
NAMESPACE = "qpu-system"


@dataclass(frozen=True)
class ValueSet:
    """A named set of Helm values the chart must render and validate with."""

    name: str
    values: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


VALUE_SETS: tuple[ValueSet, ...] = (
    ValueSet("defaults", {}, "operator, device plugin and DRA driver"),
    ValueSet("dra-only", {"devicePlugin": {"enabled": False}}, "DRA driver, no device plugin"),
    ValueSet(
        "device-plugin-only",
        {"dra": {"enabled": False}},
        "device plugin only (clusters before 1.34)",
    ),
    ValueSet(
        "emulator",
        {
            "emulator": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "credentials": {"secrets": ["emulator-ibm", "emulator-pasqal"]},
        },
        "everything plus the emulator, ServiceMonitors and mounted credentials",
    ),
    ValueSet(
        "custom",
        {
            "fullnameOverride": "qpu",
            "resourceName": "qpu.acme.io/qpu",
            "driverName": "qpu.acme.io",
            "kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet",
            "image": {"repository": "registry.acme.io/qpu-k8s", "tag": "1.2.3"},
            "operator": {
                "extraArgs": ["--log-level=debug"],
                "secretNamespaces": ["vendors"],
                "kueueAdmissionCheck": True,
            },
            "dra": {"claimCredentials": {"namespaces": ["team-a"], "allNamespaces": True}},
            "nodeAgents": {"nodeSelector": {"acme.io/quantum": "true"}, "tolerations": []},
        },
        "another domain, kubelet dir, image and node selection, Kueue's AdmissionCheck",
    ),
)


@dataclass(frozen=True)
class InstallFile:
    """One plain manifest in ``manifests/install``: a value set, optionally a subset of it."""

    values: Mapping[str, Any]
    description: str
    show_only: tuple[str, ...] = ()
    with_namespace: bool = True


# The emulator's QuantumBackends need the CRD established first, so a plain install applies
# them as a second file (Helm installs crds/ before the templates by itself).
_EMULATOR_PLAIN = {
    "emulator": {"enabled": True, "backends": {"create": False}},
    "credentials": {"secrets": ["qpu-emulator-credentials"]},
}
INSTALL_FILES: dict[str, InstallFile] = {
    "qpu-k8s.yaml": InstallFile({}, "operator, device plugin and DRA driver"),
    "qpu-k8s-with-emulator.yaml": InstallFile(
        _EMULATOR_PLAIN,
        "operator, device plugin, DRA driver and the local emulator"
        " (then apply emulator-backends.yaml)",
    ),
    "emulator-backends.yaml": InstallFile(
        {"emulator": {"enabled": True}},
        "the emulator's QuantumBackends and fake credentials; apply after the CRD is established",
        show_only=(
            "templates/emulator-credentials.yaml",
            "templates/generated-emulator-backends.yaml",
        ),
        with_namespace=False,
    ),
}

_HEADER = """\
# Generated from charts/qpu-k8s by `python -m testsupport.packaging render`;
# do not edit: change the chart, then re-render (a test fails on drift).
# What: {description}.
# Release "{release}" in namespace "{namespace}". Apply: kubectl apply -f {path}
"""


def value_set(name: str) -> ValueSet:
    for vs in VALUE_SETS:
        if vs.name == name:
            return vs
    raise KeyError(f"unknown value set {name!r}")


class RenderError(RuntimeError):
    """helm refused the chart or the values; the message is helm's."""


def helm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.helm()), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    include_crds: bool = True,
    extra_args: Sequence[str] = (),
) -> str:
    """``helm template`` the chart with ``values``; raises RenderError with helm's message."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump(dict(values or {}), f)
        f.flush()
        args = ["template", release, str(CHART), "--namespace", namespace, "-f", f.name]
        if include_crds:
            args.append("--include-crds")
        proc = helm(*args, *extra_args)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return proc.stdout


def objects(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``text``."""
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d]


WORKLOAD_KINDS = frozenset({"Deployment", "DaemonSet", "StatefulSet", "Job"})


def workloads(objs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") in WORKLOAD_KINDS]


def component(obj: Mapping[str, Any]) -> str:
    """The ``app.kubernetes.io/component`` label: operator, device-plugin, dra, emulator."""
    labels: dict[str, str] = obj.get("metadata", {}).get("labels", {})
    return labels.get("app.kubernetes.io/component", "")


def namespace_object(namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "qpu-k8s"}},
    }


def install_manifest(filename: str) -> str:
    """The plain manifest ``manifests/install/<filename>``, as it should be."""
    spec = INSTALL_FILES[filename]
    extra: list[str] = []
    for template in spec.show_only:
        extra += ["--show-only", template]
    rendered = render(spec.values, include_crds=not spec.show_only, extra_args=extra)
    header = _HEADER.format(
        description=spec.description,
        release=RELEASE,
        namespace=NAMESPACE,
        path=f"manifests/install/{filename}",
    )
    if not spec.with_namespace:
        return header + rendered
    ns = yaml.safe_dump(namespace_object(), sort_keys=False)
    return f"{header}---\n{ns}{rendered}"


_TEMPLATE_HEADER = """\
{{{{- /*
GENERATED by `python -m testsupport.packaging render` from {source}
({what}); do not edit: change the source, then re-render. A test fails on drift.
*/}}}}
"""


class GenerationError(RuntimeError):
    """A source file cannot be turned into a chart template safely."""


def _as_template(source: Path, replacements: dict[str, str], what: str) -> str:
    text = source.read_text()
    if "{{" in text or "}}" in text:
        raise GenerationError(f"{source} holds '{{{{' or '}}}}', which Helm would evaluate")
    for old, new in replacements.items():
        if old not in text:
            raise GenerationError(f"{source} no longer contains {old!r}: update the generator")
        text = text.replace(old, new)
    return _TEMPLATE_HEADER.format(source=source.relative_to(REPO), what=what) + text


def admission_policy_template() -> str:
    """The DRA claim-parameters ValidatingAdmissionPolicy, for the chart's driver name."""
    body = _as_template(
        VAP_SOURCE,
        {f'c.opaque.driver == "{DRIVER_NAME}"': 'c.opaque.driver == "{{ .Values.driverName }}"'},
        "the opaque config of our driver, whatever driverName is",
    )
    cond = "{{- if and .Values.dra.enabled .Values.dra.admissionPolicy.enabled }}\n"
    return f"{cond}{body.rstrip()}\n{{{{- end }}}}\n"


def emulator_backends_template() -> str:
    """The emulator's example QuantumBackends, pointed at the in-cluster emulator Service."""
    url = "{{ $emulatorURL }}"
    body = _as_template(
        EMULATOR_BACKENDS_SOURCE,
        {EMULATOR_LOCAL_URL: url},
        "the in-cluster emulator Service instead of 127.0.0.1",
    )
    head = (
        "{{- if and .Values.emulator.enabled .Values.emulator.backends.create }}\n"
        '{{- $emulatorURL := printf "http://%s.%s.svc:%d" (include "qpu-k8s.emulatorName" .)'
        " .Release.Namespace (int .Values.emulator.port) }}\n"
    )
    return f"{head}{body.rstrip()}\n{{{{- end }}}}\n"


def expected_files() -> Iterator[tuple[Path, bytes]]:
    """Every derived file and the content it must have."""
    for source, copy in (
        (CRD_SOURCE, CRD_CHART_COPY),
        (USAGE_CRD_SOURCE, USAGE_CRD_CHART_COPY),
        (BUDGET_CRD_SOURCE, BUDGET_CRD_CHART_COPY),
    ):
        if source.exists():
            yield copy, source.read_bytes()
    if VAP_SOURCE.exists():
        yield VAP_TEMPLATE, admission_policy_template().encode()
    if EMULATOR_BACKENDS_SOURCE.exists():
        yield EMULATOR_BACKENDS_TEMPLATE, emulator_backends_template().encode()
    for name in INSTALL_FILES:
        yield INSTALL_DIR / name, install_manifest(name).encode()
    for path, text in example_workloads.files().items():
        yield path, text.encode()


def write_all() -> list[Path]:
    changed = []
    for path, content in expected_files():
        if not path.exists() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            changed.append(path)
    return changed


def drifted() -> list[Path]:
    """Derived files whose content differs from what the sources give."""
    return [p for p, c in expected_files() if not p.exists() or p.read_bytes() != c]


def lock(extra: str = "emulator") -> str:
    """Resolve ``.[extra]`` for this Python and platform; one ``name==version`` a line."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--disable-pip-version-check", "-q", "--report", str(report), f".[{extra}]"]
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip could not resolve .[{extra}]: {proc.stderr[-2000:]}")
        data = json.loads(report.read_text())
    pins = sorted(
        (m["metadata"]["name"].lower(), m["metadata"]["version"])
        for m in data["install"]
        if m["metadata"]["name"].lower() != "qpu-k8s"
    )
    head = (
        "# Pins for the container images (Dockerfile: PIP_CONSTRAINT); covers the `emulator`\n"
        f"# extra, so both targets. Resolved for CPython {sys.version_info.major}."
        f"{sys.version_info.minor} on linux x86_64 by\n"
        "# `python -m testsupport.packaging lock`; re-run it after changing pyproject.toml.\n"
    )
    return head + "".join(f"{n}=={v}\n" for n, v in pins)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testsupport.packaging", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("render", help="rewrite the derived files from the chart and the CRD")
    sub.add_parser("check", help="exit 1 when a derived file is out of date")
    sub.add_parser("lock", help="rewrite docker/constraints.txt (needs the package index)")
    args = parser.parse_args(argv)
    if args.cmd == "render":
        for path in write_all():
            print(f"wrote {path.relative_to(REPO)}")
    elif args.cmd == "check":
        stale = drifted()
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)}", file=sys.stderr)
        if stale:
            print("run: python -m testsupport.packaging render", file=sys.stderr)
            return 1
    else:
        CONSTRAINTS.parent.mkdir(parents=True, exist_ok=True)
        CONSTRAINTS.write_text(lock())
        print(f"wrote {CONSTRAINTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
