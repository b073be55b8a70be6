"""The admin and user quick starts, as commands, checked as far as this machine allows.

Every ``helm install`` runs as ``--dry-run=client`` (values schema, templates, NOTES), every
``helm upgrade`` as ``helm template`` with the same ``--set``s, every ``kubectl create
secret`` with ``--dry-run=client`` (offline), every file a ``kubectl apply -f`` names must
exist and every object a ``kubectl wait``/``logs`` names must be defined by those files or the
chart. The same checks run over the shell blocks of README.md, so the README cannot drift.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from testsupport import packaging

NS = packaging.NAMESPACE

ADMIN_QUICKSTART = f"""
# Install (Kubernetes 1.34+; on older clusters add --set dra.enabled=false)
helm install qpu-k8s charts/qpu-k8s --namespace {NS} --create-namespace
# Your vendor credentials, in a Secret the QuantumBackend names, mounted by the node agents
kubectl -n {NS} create secret generic ibm-quantum-credentials \\
  --from-literal=QRMI_IBM_QCS_IAM_APIKEY="$IBM_CLOUD_API_KEY"
helm upgrade qpu-k8s charts/qpu-k8s -n {NS} --reuse-values \\
  --set 'credentials.secrets={{ibm-quantum-credentials}}'
# A QuantumBackend (edit its service CRN first), then wait until it is Ready
kubectl apply -f manifests/examples/backends/ibm-qcs.yaml
kubectl wait --for=condition=Ready quantumbackend/ibm-torino --timeout=180s
kubectl get quantumbackends -o wide
# A pod that asks for one QPU and runs a Bell pair
kubectl apply -f manifests/examples/pods/bell-qiskit.yaml
kubectl logs -f pod/bell-qiskit
"""

TRY_IT_QUICKSTART = f"""
# No vendor account: the in-cluster emulator and its two QPUs
helm install qpu-k8s charts/qpu-k8s -n {NS} --create-namespace --set emulator.enabled=true
kubectl wait --for=condition=Ready --timeout=180s \\
  quantumbackend/emulator-manila quantumbackend/emulator-fresnel
kubectl apply -f manifests/examples/pods/bell-qiskit.yaml
kubectl wait --for=jsonpath='{{.status.phase}}'=Succeeded pod/bell-qiskit --timeout=300s
kubectl logs pod/bell-qiskit
# DRA: a Qiskit and a Pulser container, each with a claim selected by technology
kubectl apply -f manifests/examples/jobs/paper-scripts.yaml
kubectl wait --for=condition=Complete job/paper-scripts --timeout=600s
kubectl logs job/paper-scripts --all-containers
"""

PLAIN_QUICKSTART = """
# Without Helm: the same, rendered from the chart
kubectl apply -f manifests/install/qpu-k8s-with-emulator.yaml
kubectl wait --for=condition=Established crd/quantumbackends.quantum.example.com
kubectl apply -f manifests/install/emulator-backends.yaml
"""

BLOCKS = {
    "admin": ADMIN_QUICKSTART,
    "try-it": TRY_IT_QUICKSTART,
    "plain": PLAIN_QUICKSTART,
}


def commands(block: str) -> list[list[str]]:
    """Shell lines of ``block`` (continuations joined, comments dropped), split into words."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line))
    return out


def _applied_objects(cmds: list[list[str]]) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for argv in cmds:
        if argv[:2] == ["kubectl", "apply"]:
            path = packaging.REPO / argv[argv.index("-f") + 1]
            files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
            for f in files:
                objs += packaging.objects(f.read_text())
    return objs


def _set_args(argv: list[str]) -> list[str]:
    out = []
    for i, word in enumerate(argv):
        if word == "--set":
            out += ["--set", argv[i + 1]]
    return out


def check_block(block: str, kubectl: Path) -> list[str]:
    """Problems with the commands of one quick-start block (empty when it would work)."""
    cmds = commands(block)
    problems = []
    defined = _applied_objects(cmds)
    for argv in cmds:
        if argv[0] == "helm" and argv[1] in {"install", "upgrade"}:
            release, chart = argv[2], argv[3]
            ns = argv[argv.index("-n") + 1] if "-n" in argv else argv[argv.index("--namespace") + 1]
            if argv[1] == "install":
                proc = packaging.helm(
                    "install",
                    release,
                    str(packaging.REPO / chart),
                    "-n",
                    ns,
                    "--dry-run=client",
                    *_set_args(argv),
                )
            else:
                proc = packaging.helm(
                    "template", release, str(packaging.REPO / chart), "-n", ns, *_set_args(argv)
                )
            if proc.returncode != 0:
                problems.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
            else:
                manifest = proc.stdout.split("MANIFEST:\n", 1)[-1].split("\nNOTES:", 1)[0]
                defined += packaging.objects(manifest)
        elif argv[0] == "kubectl" and "create" in argv and "secret" in argv:
            real = [str(kubectl), *[w.replace("$IBM_CLOUD_API_KEY", "x") for w in argv[1:]]]
            proc = subprocess.run(
                [*real, "--dry-run=client", "-o", "yaml"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0:
                problems.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
            else:
                defined += packaging.objects(proc.stdout)
        elif argv[:2] == ["kubectl", "apply"]:
            path = argv[argv.index("-f") + 1]
            if not (packaging.REPO / path).exists():
                problems.append(f"{path} does not exist")
    names = {(o["kind"].lower(), o["metadata"]["name"]) for o in defined}
    for argv in cmds:
        if argv[0] == "kubectl" and argv[1] in {"wait", "logs"}:
            for ref in (w for w in argv[2:] if "/" in w and not w.startswith("-")):
                kind, _, name = ref.partition("/")
                kind = {"crd": "customresourcedefinition"}.get(kind, kind)
                if (kind, name) not in names:
                    problems.append(f"{' '.join(argv)}: nothing in this block defines {ref}")
    # Secrets the applied QuantumBackends name must be created by the block (or the chart).
    secrets = {n for k, n in names if k == "secret"}
    for obj in defined:
        if obj["kind"] == "QuantumBackend":
            ref = obj["spec"].get("credentialsSecretRef", {}).get("name")
            if ref and ref not in secrets:
                problems.append(
                    f"QuantumBackend {obj['metadata']['name']} names Secret {ref}, not created"
                )
    return problems


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_quickstart_block_works(name: str, helm_bin: Path, kubectl_bin: Path) -> None:
    problems = check_block(BLOCKS[name], kubectl_bin)
    assert not problems, "\n".join(problems)


def test_checker_catches_a_broken_block(helm_bin: Path, kubectl_bin: Path) -> None:
    broken = """
helm install qpu-k8s charts/qpu-k8s -n x --set log.level=loud
kubectl apply -f manifests/examples/backends/ibm-qcs.yaml
kubectl wait --for=condition=Ready quantumbackend/nope
"""
    problems = "\n".join(check_block(broken, kubectl_bin))
    assert "log/level" in problems
    assert "quantumbackend/nope" in problems
    assert "ibm-quantum-credentials, not created" in problems


def _readme_blocks() -> list[str]:
    readme = packaging.REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    blocks = re.findall(r"```(?:sh|bash|console|shell)\n(.*?)```", text, re.DOTALL)
    return [b for b in blocks if re.search(r"^\s*helm install ", b, re.MULTILINE)]


def test_readme_helm_blocks_work(helm_bin: Path, kubectl_bin: Path) -> None:
    """README blocks that install the chart pass the same checks (none yet is fine)."""
    problems = []
    for block in _readme_blocks():
        problems += check_block(block, kubectl_bin)
    assert not problems, "\n".join(problems)
