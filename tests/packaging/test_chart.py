"""The Helm chart: lint, render for every value set, reject bad values, hold its invariants."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qpu_k8s.cli import commands as cli
from qpu_k8s.core import flags as cliutil
from testsupport import packaging
from testsupport.packaging import component, workloads

VALUE_SET_NAMES = [vs.name for vs in packaging.VALUE_SETS]


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("name", VALUE_SET_NAMES)
def test_helm_lint_strict(name: str, helm_bin: Path, tmp_path: Path) -> None:
    values = _values_file(tmp_path, dict(packaging.value_set(name).values))
    proc = packaging.helm("lint", "--strict", str(packaging.CHART), "-f", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        ("defaults", {"Deployment", "DaemonSet", "DeviceClass", "CustomResourceDefinition"},
         {"ServiceMonitor"}),
        ("dra-only", {"DeviceClass"}, {"ServiceMonitor"}),
        ("device-plugin-only", {"DaemonSet", "Deployment"}, {"DeviceClass"}),
        ("emulator", {"ServiceMonitor", "DeviceClass"}, set()),
    ],
)  # fmt: skip
def test_value_sets_switch_components(
    name: str, present: set[str], absent: set[str], renders: dict[str, list[dict[str, Any]]]
) -> None:
    objs = renders[name]
    kinds = {o["kind"] for o in objs}
    assert present <= kinds, f"{name}: missing {present - kinds}"
    assert not absent & kinds, f"{name}: unexpected {absent & kinds}"
    daemonsets = {o["metadata"]["name"] for o in objs if o["kind"] == "DaemonSet"}
    expect = {
        "defaults": {"qpu-k8s-device-plugin", "qpu-k8s-dra"},
        "dra-only": {"qpu-k8s-dra"},
        "device-plugin-only": {"qpu-k8s-device-plugin"},
        "emulator": {"qpu-k8s-device-plugin", "qpu-k8s-dra"},
    }[name]
    assert daemonsets == expect
    emulator = [o for o in objs if o["kind"] == "Deployment" and component(o) == "emulator"]
    assert bool(emulator) == (name == "emulator")


# Each wrong value, and the words helm must show: the value's path and what is wrong.
BAD_VALUES = [
    ("log.level=verbose", "at '/log/level': value must be one of 'debug', 'info'"),
    ("operator.replicas=2", "at '/operator': additional properties 'replicas' not allowed"),
    ("devicePlugin.metrics.port=80", "at '/devicePlugin/metrics/port': minimum: got 80"),
    ("driverName=QPU_driver", "at '/driverName': 'QPU_driver' does not match pattern"),
    ("credentials.secrets={Bad_Name}", "at '/credentials/secrets/0'"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
    ("kubeletDir=var/lib/kubelet", "at '/kubeletDir'"),
    ("dra.enabled=maybe", "at '/dra/enabled': got string, want boolean"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_VALUES)
def test_values_schema_rejects_with_readable_message(
    setting: str, message: str, helm_bin: Path
) -> None:
    proc = packaging.helm("template", "t", str(packaging.CHART), "--set", setting)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_acquire_before_bind_needs_the_claim_status_writer(helm_bin: Path) -> None:
    """The binding condition is written in status.devices: without the writer every pod on
    an opted-in QPU would wait unbound until the scheduler's timeout."""
    proc = packaging.helm(
        "template", "t", str(packaging.CHART), "--api-versions", "resource.k8s.io/v1",
        "--set", "dra.acquireBeforeBind=true", "--set", "dra.claimStatus.enabled=false",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "dra.acquireBeforeBind needs dra.claimStatus.enabled=true" in proc.stderr


def test_values_yaml_documents_every_schema_key() -> None:
    """values.yaml and values.schema.json describe the same tree (no undocumented key)."""
    values = yaml.safe_load((packaging.CHART / "values.yaml").read_text())
    schema = json.loads((packaging.CHART / "values.schema.json").read_text())

    def keys(node: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for k, v in node.items():
            out.add(prefix + k)
            if isinstance(v, dict) and v and k not in _FREE_FORM:
                out |= keys(v, f"{prefix}{k}.")
        return out

    def schema_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for k, prop in node.get("properties", {}).items():
            out.add(prefix + k)
            sub = schema["definitions"][prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
            if "properties" in sub and k not in _FREE_FORM:
                out |= schema_keys(sub, f"{prefix}{k}.")
        return out

    assert keys(values) == schema_keys(schema)


_FREE_FORM = {"resources", "nodeSelector", "affinity", "podAnnotations", "labels"}


def _pods(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, w["spec"]["template"]["spec"]) for w in workloads(objs)]


@pytest.mark.parametrize("name", VALUE_SET_NAMES)
def test_every_container_is_locked_down(
    name: str, renders: dict[str, list[dict[str, Any]]]
) -> None:
    for workload, pod in _pods(renders[name]):
        where = f"{name}/{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        if workload["kind"] == "DaemonSet":
            # The kubelet's sockets are root's: uid 0, but no capability at all.
            assert pod["securityContext"]["runAsUser"] == 0, where
        else:
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] == 65532, where
        for host_ns in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host_ns), f"{where}: {host_ns}"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), f"{where}: requests"
            assert "memory" in res["limits"], f"{where}: memory limit"
            assert not c["image"].endswith(":latest"), where


# hostPath volumes each agent may have, relative to the kubelet dir ("K") or absolute.
ALLOWED_HOST_PATHS = {
    "device-plugin": {
        ("K/device-plugins", "Directory", False),
        ("K/pod-resources", "Directory", True),
        ("/var/lib/qpu-k8s/device-plugin", "DirectoryOrCreate", False),
    },
    "dra": {
        ("K/plugins/D", "DirectoryOrCreate", False),
        ("K/plugins_registry", "Directory", False),
        ("/var/run/cdi", "DirectoryOrCreate", False),
        ("/var/lib/qpu-k8s/dra", "DirectoryOrCreate", False),
    },
}


@pytest.mark.parametrize("name", ["defaults", "custom"])
def test_host_paths_are_only_the_kubelet_dirs_each_agent_needs(
    name: str, renders: dict[str, list[dict[str, Any]]]
) -> None:
    values = packaging.value_set(name).values
    kubelet = values.get("kubeletDir", "/var/lib/kubelet")
    driver = values.get("driverName", "qpu.quantum.example.com")
    for workload, pod in _pods(renders[name]):
        host = {
            v["name"]: (v["hostPath"]["path"], v["hostPath"]["type"])
            for v in pod.get("volumes", [])
            if "hostPath" in v
        }
        if workload["kind"] != "DaemonSet":
            assert not host, f"{workload['metadata']['name']} must not mount host paths"
            continue
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        got = set()
        for vol, (path, kind) in host.items():
            # Mounted at the same path: a socket path means the same to kubelet and agent.
            assert mounts[vol]["mountPath"] == path
            rel = path.replace(kubelet, "K", 1).replace(driver, "D")
            got.add((rel, kind, bool(mounts[vol].get("readOnly"))))
        assert got == ALLOWED_HOST_PATHS[component(workload)], workload["metadata"]["name"]


def test_operator_is_one_replica_recreated(renders: dict[str, list[dict[str, Any]]]) -> None:
    (op,) = [
        o for o in renders["defaults"] if component(o) == "operator" and o["kind"] == "Deployment"
    ]
    assert op["spec"]["replicas"] == 1
    assert op["spec"]["strategy"] == {"type": "Recreate"}


def test_daemonset_update_strategies(renders: dict[str, list[dict[str, Any]]]) -> None:
    ds = {component(o): o for o in renders["defaults"] if o["kind"] == "DaemonSet"}
    # DRA: the new pod registers beside the old one (sockets named per pod) before it stops.
    assert ds["dra"]["spec"]["updateStrategy"]["rollingUpdate"] == {
        "maxUnavailable": 0,
        "maxSurge": 1,
    }
    # Device plugin: never two on a node (same resource, same checkpoint).
    assert ds["device-plugin"]["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


@pytest.mark.parametrize("name", VALUE_SET_NAMES)
def test_services_select_pods_and_ports(
    name: str, renders: dict[str, list[dict[str, Any]]]
) -> None:
    objs = renders[name]
    pods = [(w["spec"]["template"], w) for w in workloads(objs)]
    services = [o for o in objs if o["kind"] == "Service"]
    assert services
    for svc in services:
        selector = svc["spec"]["selector"]
        matched = [w for tpl, w in pods if selector.items() <= tpl["metadata"]["labels"].items()]
        assert len(matched) == 1, f"{svc['metadata']['name']} selects {len(matched)} workloads"
        ports = {
            p["name"]
            for c in matched[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
        assert len(targets) == 1, sm["metadata"]["name"]
        names = {p["name"] for p in targets[0]["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= names


def test_custom_values_reach_the_objects(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = renders["custom"]
    for w in workloads(objs):
        c = w["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "registry.acme.io/qpu-k8s:1.2.3"
        assert w["metadata"]["name"].startswith("qpu-")
    ds = [o for o in objs if o["kind"] == "DaemonSet"]
    for d in ds:
        spec = d["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"acme.io/quantum": "true"}
        assert "tolerations" not in spec
    (dc,) = [o for o in objs if o["kind"] == "DeviceClass"]
    assert dc["metadata"]["name"] == "qpu.acme.io"
    assert dc["spec"]["extendedResourceName"] == "qpu.acme.io/qpu"
    assert dc["spec"]["selectors"][0]["cel"]["expression"] == 'device.driver == "qpu.acme.io"'


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_secrets_are_mounted_never_put_in_env(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = renders["emulator"]
    for w in workloads(objs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                assert "secretKeyRef" not in e.get("valueFrom", {}), e["name"]
            assert "envFrom" not in c
    for ds in (o for o in objs if o["kind"] == "DaemonSet"):
        vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        for secret in ("emulator-ibm", "emulator-pasqal"):
            vol = vols[f"credentials-{secret}"]["secret"]
            assert vol == {"secretName": secret, "optional": True, "defaultMode": 0o400}


# --- the chart's env and args against the agents' real command-line flags -----------------

# Flags the chart sets that an agent does not define yet (each entry must still be missing:
# the test fails when one appears, so this list cannot go stale).
PENDING_FLAGS: dict[str, set[str]] = {}


def agent_flags(command: str) -> set[str] | None:
    """The ``--flags`` of one ``qpu-k8s`` sub-command, or None when it cannot be imported."""
    try:
        module = importlib.import_module(cli.COMMANDS[command][0])
    except ImportError:
        return None
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")}


def _chart_flags(objs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Sub-command -> flags the chart passes (as args or as QPU_K8S_* env)."""
    used: dict[str, set[str]] = {}
    for w in workloads(objs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            command, *args = c["args"]
            flags = used.setdefault(command, set())
            flags |= {a.split("=", 1)[0] for a in args if a.startswith("--")}
            for name in _env(c):
                if name.startswith("QPU_K8S_"):
                    flags.add("--" + name.removeprefix("QPU_K8S_").lower().replace("_", "-"))
    return used


def test_chart_env_and_args_match_agent_flags(renders: dict[str, list[dict[str, Any]]]) -> None:
    used: dict[str, set[str]] = {}
    for name in ("emulator", "custom"):
        for command, flags in _chart_flags(renders[name]).items():
            used.setdefault(command, set()).update(flags)
    assert set(used) == {"operator", "device-plugin", "dra-plugin", "emulator"}
    problems = []
    for command, flags in sorted(used.items()):
        real = agent_flags(command) or set()
        pending = PENDING_FLAGS.get(command, set())
        for flag in sorted(flags - real - pending):
            env = cliutil.env_name(flag)
            problems.append(f"qpu-k8s {command} has no {flag} (the chart sets it or {env})")
        for flag in sorted(pending & real):
            problems.append(f"{command} {flag} exists now: remove it from PENDING_FLAGS")
    assert not problems, "\n".join(problems)


# --- NOTES.txt ------------------------------------------------------------------------------


def _install_notes(tmp_path: Path, values: dict[str, Any]) -> str:
    """The NOTES a ``helm install --dry-run=client`` with ``values`` prints."""
    proc = packaging.helm(
        "install",
        "qpu-k8s",
        str(packaging.CHART),
        "-n",
        packaging.NAMESPACE,
        "--dry-run=client",
        "-f",
        str(_values_file(tmp_path, values)),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize("name", ["defaults", "emulator", "device-plugin-only"])
def test_notes_name_files_that_exist(name: str, helm_bin: Path, tmp_path: Path) -> None:
    notes = _install_notes(tmp_path, dict(packaging.value_set(name).values))
    assert "kubectl get quantumbackends" in notes
    paths = set(re.findall(r"manifests/[\w./-]+", notes))
    assert paths
    missing = sorted(p for p in paths if not (packaging.REPO / p.rstrip(".")).exists())
    assert not missing, f"NOTES.txt names files that do not exist: {missing}"


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({}, ["devices: one per lane", "acquire before bind: off"]),
        (
            {"dra": {"deviceModel": "capacity", "acquireBeforeBind": True}},
            ["devices: one per QPU", "acquire before bind: on"],
        ),
    ],
)
def test_notes_say_how_dra_publishes_and_acquires(
    values: dict[str, Any], says: list[str], helm_bin: Path, tmp_path: Path
) -> None:
    """The DRA choices with a trade-off (1.36+ only, ~5 s per claim) are visible at install,
    with the value that changes each."""
    notes = " ".join(_install_notes(tmp_path, values).split())
    for text in says:
        assert text in notes, notes


def test_helm_template_output_is_deterministic(helm_bin: Path) -> None:
    one = packaging.render({})
    two = packaging.render({})
    assert one == two


def test_chart_package_builds(helm_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(helm_bin), "package", str(packaging.CHART), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "qpu-k8s-0.1.0.tgz").exists()
