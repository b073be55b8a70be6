"""The chart installed on the local cluster, as a user installs it, and what tests read of it.

``helm install`` of ``charts/qpu-k8s`` unchanged; the only values are the local images and
the emulator (README: "Without a vendor account")::

    helm install qpu-k8s charts/qpu-k8s -n qpu-system --create-namespace \\
      --set image.repository=qpu.local/qpu-k8s --set image.tag=dev --set emulator.enabled=true

The emulator runs in the cluster; tests reach its admin API (sessions, faults) through its
Service's ClusterIP, which the host routes to the pod bridge. Agents' metrics are read from
their pod IPs the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qpu_k8s.emulator.client import EmulatorClient
from testsupport.cluster import NODE, REPO, LocalCluster, wait_until

CHART = REPO / "charts" / "qpu-k8s"
RELEASE = "qpu-k8s"
NAMESPACE = "qpu-system"
AGENTS_IMAGE = "qpu.local/qpu-k8s:dev"
EMULATOR_IMAGE = "qpu.local/qpu-k8s:dev-emulator"
BUSYBOX_IMAGE = "qpu.local/busybox:1.35"
LOCAL_VALUES = (
    "image.repository=qpu.local/qpu-k8s",
    "image.tag=dev",
    "emulator.enabled=true",
)
RESOURCE = "quantum.example.com/qpu"
DRIVER = "qpu.quantum.example.com"
GROUP, VERSION, PLURAL = "quantum.example.com", "v1alpha1", "quantumbackends"
EMULATOR_SECRET = "qpu-emulator-credentials"
EMULATOR_BACKENDS = ("emulator-manila", "emulator-fresnel")
FINALIZER = "quantum.example.com/cleanup"
CRD_NAME = "quantumbackends.quantum.example.com"
USAGE_CRD_NAME = "quantumusages.quantum.example.com"
BUDGET_CRD_NAME = "quantumbudgets.quantum.example.com"


class AdminClient(EmulatorClient):
    """The emulator's admin API, plus its request log (for counting release calls)."""

    def requests(self, path_contains: str | None = None) -> list[dict[str, Any]]:
        """The emulator's log of served requests (method, route path, status)."""
        query = "?" + urllib.parse.urlencode({"path": path_contains}) if path_contains else ""
        url = f"{self.url}/_emulator/requests{query}"
        with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # noqa: S310 - http URL
            out: list[dict[str, Any]] = json.loads(resp.read())["requests"]
        return out

    def release_calls(self, session_id: str) -> int:
        """Successful requests that closed this session (qrmi's release)."""
        return sum(
            1
            for r in self.requests(f"/sessions/{session_id}")
            if r["method"] in ("PATCH", "DELETE") and r["status"] < 400
        )

    def session(self, session_id: str) -> dict[str, Any] | None:
        return next((s for s in self.sessions() if s["id"] == session_id), None)

    def open_ids(self, backend: str | None = None) -> set[str]:
        """The ids of the sessions open now (of ``backend``, or all)."""
        return {s["id"] for s in self.sessions(backend, open_only=True)}


@dataclass
class Release:
    """One installed release of the chart."""

    lc: LocalCluster
    name: str = RELEASE
    namespace: str = NAMESPACE
    extra_secrets: list[str] = field(default_factory=list)

    @property
    def fullname(self) -> str:
        return self.name if "qpu-k8s" in self.name else f"{self.name}-qpu-k8s"

    def emulator_service_url(self) -> str:
        """The URL pods use (cluster DNS), as the chart's emulator backends do."""
        return f"http://{self.fullname}-emulator.{self.namespace}.svc:8080"

    def emulator(self, timeout: float = 15.0) -> AdminClient:
        """The in-cluster emulator's admin API, through its ClusterIP from the host."""
        ip = self.lc.kubectl(
            "-n",
            self.namespace,
            "get",
            "service",
            f"{self.fullname}-emulator",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ).stdout.strip()
        return AdminClient(f"http://{ip}:8080", timeout=timeout)

    def credential_values(self) -> list[str]:
        """The emulator's fake credentials as the chart stored them, plus the tests' own."""
        secret = self.lc.kubectl_json("-n", self.namespace, "get", "secret", EMULATOR_SECRET)
        values = [base64.b64decode(v).decode() for v in (secret.get("data") or {}).values()]
        return [v for v in values if v] + list(self.extra_secrets)

    def pods(self, component: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.lc.kubectl_json(
            "-n",
            self.namespace,
            "get",
            "pods",
            "-l",
            f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}",
        )["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def metrics(self, component: str, port: int) -> str:
        """``/metrics`` of the one running pod of a component, from its pod IP."""
        pods = [p for p in self.pods(component) if p["status"].get("phase") == "Running"]
        assert len(pods) == 1, f"expected one running {component} pod, got {len(pods)}"
        ip = pods[0]["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=10) as resp:
            text: str = resp.read().decode()
        return text

    def logs(self, component: str) -> str:
        return self.lc.kubectl(
            "-n",
            self.namespace,
            "logs",
            "-l",
            f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}",
            "--tail=-1",
            "--all-containers",
            "--prefix",
            check=False,
        ).stdout

    def allocatable(self, resource: str = RESOURCE) -> int:
        node = self.lc.kubectl_json("get", "node", NODE)
        return int((node["status"].get("allocatable") or {}).get(resource, "0"))

    def backend(self, name: str) -> dict[str, Any] | None:
        proc = self.lc.kubectl("get", "quantumbackend", name, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(proc.stdout)
        return obj

    def condition(self, name: str, ctype: str = "Ready") -> dict[str, Any]:
        obj = self.backend(name) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == ctype:
                cond: dict[str, Any] = c
                return cond
        return {}

    def slices(self, *, node: str | None = None, pool: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.lc.kubectl_json("get", "resourceslices")["items"]
        return [
            s
            for s in items
            if s["spec"]["driver"] == DRIVER
            and (node is None or s["spec"].get("nodeName") == node)
            and (pool is None or s["spec"]["pool"]["name"] == pool)
        ]

    def devices(self, **where: str) -> dict[str, dict[str, Any]]:
        """Published device name -> device (attributes, taints), of our driver."""
        return {d["name"]: d for s in self.slices(**where) for d in s["spec"].get("devices") or []}

    def upgrade(
        self,
        *,
        values: Mapping[str, str] | None = None,
        json_values: Mapping[str, Any] | None = None,
        timeout: float = 300,
    ) -> None:
        """``helm upgrade --reuse-values`` of this release with ``values`` (``--set``) and
        ``json_values`` (``--set-json``), waited for: how a test switches one setting."""
        args = ["upgrade", self.name, str(CHART), "-n", self.namespace, "--reuse-values"]
        for key, value in (values or {}).items():
            args += ["--set", f"{key}={value}"]
        for key, obj in (json_values or {}).items():
            args += ["--set-json", f"{key}={json.dumps(obj)}"]
        self.lc.helm(*args, "--wait", "--timeout", f"{int(timeout)}s", timeout=timeout + 60)


def force_delete_backends(lc: LocalCluster, names: Sequence[str]) -> None:
    """Delete QuantumBackends even when no operator runs any more (finalizer removed)."""
    for name in names:
        lc.kubectl(
            "delete", "quantumbackend", name, "--wait=false", "--ignore-not-found", check=False
        )
        lc.kubectl(
            "patch",
            "quantumbackend",
            name,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":[]}}',
            check=False,
        )


def uninstall(lc: LocalCluster, name: str = RELEASE, namespace: str = NAMESPACE) -> None:
    """Remove a release and everything it left, the way the README says: QuantumBackends
    first, while the operator still runs their finalizers (helm deletes the operator's
    Deployment before custom resources, which would leave them Terminating for good), then
    the release; anything still stuck has its finalizer removed."""
    listed = lc.helm("list", "-n", namespace, "-q", check=False).stdout.split()
    if name in listed:
        lc.kubectl("delete", "quantumbackends", "--all", "--timeout=120s", check=False, timeout=150)
        lc.helm("uninstall", name, "-n", namespace, "--wait", "--timeout", "180s", check=False)
    leftovers = lc.kubectl("get", "quantumbackends", "-o", "name", check=False).stdout.split()
    force_delete_backends(lc, [n.split("/", 1)[1] for n in leftovers])
    # Helm installs crds/ only when absent and never upgrades it: without this, a reused
    # cluster would keep the CRD of an older checkout.
    lc.kubectl(
        "delete",
        "crd",
        CRD_NAME,
        USAGE_CRD_NAME,
        BUDGET_CRD_NAME,
        "--ignore-not-found",
        "--timeout=120s",
        check=False,
    )
    lc.kubectl(
        "delete", "namespace", namespace, "--ignore-not-found", "--timeout=180s", check=False
    )


def install(
    lc: LocalCluster,
    *extra_set: str,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    timeout: float = 300,
) -> Release:
    """``helm install`` the chart with the local images and the emulator; wait until the
    operator and both node agents run and the emulator's QuantumBackends are Ready."""
    uninstall(lc, name, namespace)
    args = ["install", name, str(CHART), "-n", namespace, "--create-namespace"]
    for value in (*LOCAL_VALUES, *extra_set):
        args += ["--set", value]
    lc.helm(*args, "--wait", "--timeout", f"{int(timeout)}s", timeout=timeout + 60)
    rel = Release(lc, name, namespace)
    lc.kubectl(
        "wait",
        "--for=condition=Ready",
        *(f"quantumbackend/{b}" for b in EMULATOR_BACKENDS),
        f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )
    return rel


def backend_doc(
    rel: Release,
    name: str,
    resource_id: str,
    *,
    pasqal: bool = False,
    node_bound: bool = False,
    lanes: int = 1,
    probe_seconds: int = 5,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A QuantumBackend served by the in-cluster emulator, with its public credentials."""
    url = rel.emulator_service_url()
    if pasqal:
        rtype = "pasqal-cloud"
        config = {
            "QRMI_PASQAL_CLOUD_BASE_URL": url,
            "QRMI_PASQAL_CLOUD_AUTH_ENDPOINT": f"{url}/oauth/token",
            "QRMI_PASQAL_CLOUD_PROJECT_ID": "emulator-project",
        }
    else:
        rtype = "ibm-quantum-compute-service"
        config = {
            "QRMI_IBM_QCS_ENDPOINT": f"{url}/api/v1",
            "QRMI_IBM_QCS_IAM_ENDPOINT": url,
            "QRMI_IBM_QCS_SERVICE_CRN": (
                "crn:v1:bluemix:public:quantum-computing:us-east:a/emulator:qpu-k8s-emulator::"
            ),
        }
    spec: dict[str, Any] = {
        "resourceId": resource_id,
        "type": rtype,
        "access": "node-bound" if node_bound else "shared",
        "lanes": lanes,
        "probeIntervalSeconds": probe_seconds,
        "config": config,
        "credentialsSecretRef": {"name": EMULATOR_SECRET},
    }
    if node_bound:
        spec["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QuantumBackend",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


@contextlib.contextmanager
def backends(release: Release, docs: Sequence[dict[str, Any]]) -> Iterator[list[str]]:
    """Apply QuantumBackends, wait until Ready; delete them (through the operator) after,
    and wait until no ResourceSlice of ours offers their devices any more."""
    lc = release.lc
    names = [d["metadata"]["name"] for d in docs]
    lc.apply(docs)
    try:
        lc.kubectl(
            "wait",
            "--for=condition=Ready",
            *(f"quantumbackend/{n}" for n in names),
            "--timeout=180s",
            timeout=200,
        )
        yield names
    finally:
        lc.kubectl(
            "delete", "quantumbackend", *names, "--ignore-not-found", "--timeout=120s", check=False
        )
        wait_until(
            lambda: (
                not lc.kubectl(
                    "get",
                    "quantumbackends",
                    *names,
                    "-o",
                    "name",
                    "--ignore-not-found",
                    check=False,
                ).stdout.strip()
            ),
            120,
            f"QuantumBackends {names} deleted",
            every=1.0,
        )

        # The node agents drop a backend's devices once they see the operator's ConfigMap
        # change: until then the next test's claims could still be allocated one of them.
        def offered() -> list[str]:
            return [
                d
                for d in release.devices()
                if any(d == n or d.startswith(f"{n}-lane-") for n in names)
            ]

        wait_until(
            lambda: not offered(),
            60,
            f"the devices of {names} gone from every ResourceSlice",
            every=1.0,
        )


# -- claims ----------------------------------------------------------------------------------
def claim_spec(
    expression: str | None = None,
    tolerations: list[dict[str, str]] | None = None,
    *,
    lanes: int | None = None,
) -> dict[str, Any]:
    """A claim spec for one device of our DeviceClass: the one the CEL ``expression``
    selects (any when None), tolerating ``tolerations``; ``lanes``: that many lanes of a QPU
    device with consumable capacity (``dra.deviceModel: capacity``; default one)."""
    exactly: dict[str, Any] = {"deviceClassName": DRIVER}
    if lanes is not None:
        exactly["capacity"] = {"requests": {"lanes": str(lanes)}}
    if expression is not None:
        exactly["selectors"] = [{"cel": {"expression": expression}}]
    if tolerations:
        exactly["tolerations"] = tolerations
    return {"devices": {"requests": [{"name": "qpu", "exactly": exactly}]}}


def claim(
    name: str,
    expression: str | None = None,
    tolerations: list[dict[str, str]] | None = None,
    *,
    lanes: int | None = None,
) -> dict[str, Any]:
    """A ResourceClaim named ``name`` with :func:`claim_spec`."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": claim_spec(expression, tolerations, lanes=lanes),
    }


def claim_template(name: str, expression: str | None = None) -> dict[str, Any]:
    """A ResourceClaimTemplate named ``name``: one claim per pod, with :func:`claim_spec`."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {"spec": claim_spec(expression)},
    }


# -- pods ------------------------------------------------------------------------------------
# Prints the QRMI environment the container was given, one KEY=VALUE a line, credentials as
# sha256 digests (so a test can check the value without putting it in a log), then either
# exits or stays until SIGTERM.
ENV_SCRIPT = r"""
env | grep -E '^(QRMI_|SLURM_JOB_QPU_|[A-Za-z0-9_]+_QRMI_)' | sort | while IFS='=' read -r k v; do
  case "$k" in
    *_ACQUISITION_TOKEN) echo "$k=$v" ;;
    *APIKEY|*API_KEY|*AUTH_TOKEN|*TOKEN|*SECRET|*PASSWORD)
      echo "$k=sha256:$(printf %s "$v" | sha256sum | cut -d' ' -f1)" ;;
    *) echo "$k=$v" ;;
  esac
done
echo ENV-DONE
"""
STAY = "trap 'exit 0' TERM; while :; do sleep 1; done"
# ENV_SCRIPT, also printing the read-only admin-access variables (QPU_ADMIN_*, {id}_QPU_*).
ADMIN_ENV_SCRIPT = ENV_SCRIPT.replace("^(QRMI_|", "^(QPU_ADMIN_|[A-Za-z0-9_]+_QPU_|QRMI_|")


def pod(
    name: str,
    *,
    stay: bool = True,
    limits: dict[str, Any] | None = None,
    claims: dict[str, dict[str, str]] | None = None,
    image: str = BUSYBOX_IMAGE,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """A pod whose container prints its QRMI environment (``ENV_SCRIPT``); ``claims`` maps a
    pod claim name to its source (``{"resourceClaimName": ...}`` or a template)."""
    container: dict[str, Any] = {
        "name": "job",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command or ["sh", "-c", ENV_SCRIPT + (STAY if stay else "")],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 2,
        "containers": [container],
    }
    if limits:
        container["resources"] = {"limits": {k: str(v) for k, v in limits.items()}}
    if claims:
        spec["resourceClaims"] = [{"name": k, **v} for k, v in claims.items()]
        container.setdefault("resources", {})["claims"] = [{"name": k} for k in claims]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def pod_phase(lc: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = lc.kubectl_json("-n", namespace, "get", "pod", name).get("status", {})
    return status


def wait_pod(
    lc: LocalCluster, namespace: str, name: str, phase: str = "Running", timeout: float = 180
) -> dict[str, Any]:
    """Wait for a pod phase; fail at once (with its log and events) if it ends otherwise."""
    final = {"Succeeded", "Failed"}

    def check() -> dict[str, Any] | None:
        status = pod_phase(lc, namespace, name)
        got = status.get("phase")
        if got == phase:
            return status
        if got in final:
            logs = lc.kubectl("-n", namespace, "logs", name, "--all-containers", check=False)
            raise AssertionError(
                f"pod {namespace}/{name} ended {got} while waiting for {phase}: "
                f"{status.get('reason', '')} {status.get('message', '')}\n{logs.stdout[-3000:]}"
            )
        return None

    try:
        return wait_until(check, timeout, f"pod {namespace}/{name} {phase}", every=0.5)
    except AssertionError as err:
        if "timed out" not in str(err):
            raise
        events = lc.kubectl(
            "-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False
        )
        raise AssertionError(f"{err}\n{events.stdout[-3000:]}") from None


def printed_env(lc: LocalCluster, namespace: str, name: str, timeout: float = 60) -> dict[str, str]:
    """What ``ENV_SCRIPT`` printed in a pod, as a dict (waits for the whole list)."""

    def read() -> str | None:
        text = lc.kubectl("-n", namespace, "logs", name, check=False).stdout
        return text if "ENV-DONE" in text else None

    text = wait_until(read, timeout, f"the environment printed by {namespace}/{name}")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
