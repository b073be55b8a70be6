"""Fixtures of the end-to-end tier: the chart installed once on the real cluster, the
session's extra QuantumBackends, and a namespace per test that is scanned for credentials
before it is deleted."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

# QuantumBackends the session adds to the chart's two, so that the README's DRA examples have
# what they select: a node-bound 133-qubit IBM QPU (published by the DRA driver in the node's
# pool, wiped by a kubelet restart) and Pasqal's 100-atom simulator (what the simulator
# guards in the selectors exclude).
TORINO = "e2e-torino"
EMU_FREE = "e2e-emu-free"
ALL_LANES = {
    "emulator-manila-lane-0",
    "emulator-manila-lane-1",
    "emulator-fresnel-lane-0",
    f"{TORINO}-lane-0",
    f"{TORINO}-lane-1",
    f"{EMU_FREE}-lane-0",
}


def scan_cluster(lc: LocalCluster, release: rel.Release) -> list[str]:
    """Where outside Secrets a credential value appears: the logs of every pod of the release
    (operator, node agents, emulator), QuantumBackends (status, annotations), Events of every
    namespace, ConfigMaps of the release namespace, ResourceSlices, ResourceClaims, Nodes."""
    secrets = release.credential_values()
    texts = {
        "quantumbackends": lc.kubectl("get", "quantumbackends", "-o", "json").stdout,
        "events": lc.kubectl("get", "events", "-A", "-o", "json").stdout,
        "configmaps": lc.kubectl("-n", release.namespace, "get", "configmaps", "-o", "json").stdout,
        "resourceslices": lc.kubectl("get", "resourceslices", "-o", "json").stdout,
        "resourceclaims": lc.kubectl("get", "resourceclaims", "-A", "-o", "json").stdout,
        "nodes": lc.kubectl("get", "nodes", "-o", "json").stdout,
    }
    for component in ("operator", "device-plugin", "dra", "emulator"):
        texts[f"{component} logs"] = release.logs(component)
    return [
        f"{where} hold {v[:4]}..." for where, text in texts.items() for v in secrets if v in text
    ]


@pytest.fixture(scope="session")
def release(local_cluster: LocalCluster) -> Iterator[rel.Release]:
    """``helm install`` of the chart (local images, emulator on), plus the session's
    backends; ready once the device plugin advertises every lane and the DRA driver has
    published the node-bound ones."""
    installed = rel.install(local_cluster)
    extra = [
        rel.backend_doc(installed, TORINO, "fake_torino", node_bound=True, lanes=2),
        rel.backend_doc(installed, EMU_FREE, "EMU_FREE", pasqal=True),
    ]
    local_cluster.apply(extra)
    local_cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"quantumbackend/{TORINO}",
        f"quantumbackend/{EMU_FREE}",
        "--timeout=180s",
        timeout=200,
    )
    wait_until(
        lambda: installed.allocatable() == len(ALL_LANES),
        240,
        f"the device plugin to advertise {len(ALL_LANES)} healthy lanes",
        every=2.0,
    )
    wait_until(
        lambda: set(installed.devices()) == ALL_LANES,
        240,
        "ResourceSlices of every lane (node pool and shared pools)",
        every=2.0,
    )
    yield installed
    # After every e2e test of the session: no credential value anywhere but in Secrets
    # (and the containers' environments, which the namespace scans cover).
    leaks = scan_cluster(local_cluster, installed)
    assert not leaks, f"credential values outside Secrets: {leaks}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:28].strip("-")


def scan_namespace(lc: LocalCluster, namespace: str, secrets: list[str]) -> list[str]:
    """Where in a namespace's pod specs, events, claims and logs a credential value appears."""
    found = []
    texts = {
        "pods": lc.kubectl("-n", namespace, "get", "pods", "-o", "json", check=False).stdout,
        "events": lc.kubectl("-n", namespace, "get", "events", "-o", "json", check=False).stdout,
        "resourceclaims": lc.kubectl(
            "-n", namespace, "get", "resourceclaims", "-o", "json", check=False
        ).stdout,
    }
    pods = json.loads(texts["pods"] or '{"items": []}')["items"]
    for pod in pods:
        name = pod["metadata"]["name"]
        texts[f"logs of pod {name}"] = lc.kubectl(
            "-n", namespace, "logs", name, "--all-containers", "--tail=-1", check=False
        ).stdout
    for where, text in texts.items():
        found += [f"{where} holds {value[:4]}..." for value in secrets if value in text]
    return found


@contextlib.contextmanager
def scanned_namespace(lc: LocalCluster, release: rel.Release, name: str) -> Iterator[str]:
    """Namespace ``name`` with its default ServiceAccount for the block. Before it is
    deleted, its pods (specs, status), events, claims and every container's log are scanned
    for the credential values in use; it is deleted and waited for, so the next test finds
    every lane free, also when the block raised (its pods would hold lanes from the tests
    after it)."""
    lc.kubectl("create", "namespace", name)
    try:
        wait_until(
            lambda: (
                lc.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode
                == 0
            ),
            60,
            f"the default ServiceAccount of {name}",
        )
        yield name
    finally:
        leaks = scan_namespace(lc, name, release.credential_values())
        lc.kubectl("delete", "namespace", name, "--timeout=240s", check=False, timeout=260)
    assert not leaks, f"credential values found in namespace {name}: {leaks}"


@pytest.fixture
def ns(
    local_cluster: LocalCluster, release: rel.Release, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A namespace for one test (:func:`scanned_namespace`: scanned, then deleted)."""
    name = f"e2e-{_slug(request.node.name)}-{uuid.uuid4().hex[:4]}"
    with scanned_namespace(local_cluster, release, name):
        yield name


@pytest.fixture
def emulator(release: rel.Release) -> Iterator[rel.AdminClient]:
    """The in-cluster emulator's admin API; faults set by a test are cleared after it."""
    client = release.emulator()
    yield client
    client.clear_faults()


def node_pool_devices(release: rel.Release) -> set[str]:
    return set(release.devices(node=NODE))


@pytest.fixture
def without_device_plugin(local_cluster: LocalCluster, release: rel.Release) -> Iterator[None]:
    """The release upgraded with ``devicePlugin.enabled=false`` (so ``quantum.example.com/qpu``
    is served by DRA through the DeviceClass), and put back afterwards."""

    def upgrade(enabled: bool) -> None:
        release.upgrade(values={"devicePlugin.enabled": str(enabled).lower()})

    upgrade(False)
    try:
        wait_until(lambda: not release.pods("device-plugin"), 120, "the device plugin pod gone")
        wait_until(lambda: release.allocatable() == 0, 60, "no allocatable device-plugin QPU")
        yield
    finally:
        upgrade(True)
        wait_until(
            lambda: release.allocatable() == len(ALL_LANES),
            180,
            "the device plugin back with every lane",
            every=1.0,
        )
