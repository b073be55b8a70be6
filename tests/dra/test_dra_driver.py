"""The DRA driver over real gRPC with the fake kubelet and the emulator (no apiserver).

Claims come from an in-memory source shaped like the apiserver's answers; the apiserver
tier (test_dra_k8s.py) repeats the main paths with claims read from the real apiserver.
"""

from __future__ import annotations

import json
import stat
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from qpu_k8s.core.checkpoint import read_boot_id
from qpu_k8s.core.journal import read_snapshot
from qpu_k8s.core.qrmi_client import QuantumResourceClient, qrmi_client_factory
from qpu_k8s.dra.agent import DraDriver
from qpu_k8s.dra.registration import SERVICES
from qpu_k8s.dra.slicesync import NodeSlices
from qpu_k8s.dra.state import (
    CHECKPOINT_NAME,
    JOURNAL_VERSION,
    ClaimPhase,
    ClaimRecord,
    DeviceRecord,
    Record,
    StateStore,
)
from qpu_k8s.fakekubelet import ClaimRef, FakeDRAKubelet
from qpu_k8s.resourceslices.build import PoolScope, shared_pool_name
from qpu_k8s.resourceslices.policy import UnhealthyMode
from qpu_k8s.resourceslices.publish import SlicePublisher
from testsupport.dra import (
    NS,
    DraNode,
    StaticClaims,
    allocated_claim,
    params_config,
    put_allocated_claim,
)
from testsupport.emulator import IBM_KEY, SECRETS, USER_KEY
from testsupport.names import DRIVER
from testsupport.waiting import wait_for


@pytest.fixture
def claims() -> StaticClaims:
    return StaticClaims()


def start(node_env: DraNode, claims: StaticClaims, **overrides: Any) -> DraDriver:
    agent = DraDriver(node_env.agent_config(**overrides), claims=claims, publish_slices=False)
    agent.start()
    return agent


@pytest.fixture
def agent(node_env: DraNode, claims: StaticClaims) -> Iterator[DraDriver]:
    a = start(node_env, claims)
    yield a
    a.stop()


def _open_sessions(emu: Any, backend: str) -> list[Any]:
    return list(emu.state.open_sessions(backend))


def _session(emu: Any, token: str) -> Any:
    return emu.state.session(token)


def test_registration_sockets_and_both_api_versions(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet
) -> None:
    agent = start(node_env, claims, instance="abc123")
    try:
        reg = kubelet.wait_for_registration(DRIVER)
        assert reg.supported_versions == SERVICES
        assert reg.chosen_version == "v1"
        assert reg.health_versions == ("v1", "v1alpha1")
        assert reg.endpoint == str(node_env.root / "plugins" / DRIVER / "dra-abc123.sock")
        assert reg.socket_path == node_env.root / "registry" / f"{DRIVER}-abc123-reg.sock"
        assert agent.registration is not None
        assert agent.registration.wait_registered(5)
        # The documented gauge: 1 while the kubelet has accepted the registration.
        assert REGISTRY.get_sample_value("qpu_k8s_dra_registered") == 1.0
        assert stat.S_IMODE(agent.paths.endpoint.stat().st_mode) == 0o600
        ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
        for version in ("v1", "v1beta1"):
            out = kubelet.node_prepare_resources([ref], version)
            assert out[ref.uid].error == ""
            assert out[ref.uid].devices[0].device_name == "ibm-manila-lane-0"
            assert kubelet.node_unprepare_resources([ref], version) == {ref.uid: ""}
    finally:
        agent.stop()
    kubelet.wait_for_deregistration(DRIVER)
    assert not agent.paths.endpoint.exists()
    assert not agent.paths.registration.exists()
    assert REGISTRY.get_sample_value("qpu_k8s_dra_registered") == 0.0


def test_rolling_update_two_instances_side_by_side(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet
) -> None:
    old = start(node_env, claims, instance="old")
    new: DraDriver | None = None
    try:
        kubelet.wait_for_registration(DRIVER)
        new = start(node_env, claims, instance="new")
        reg = kubelet.wait_for_registration(DRIVER, count=2)
        assert reg.endpoint.endswith("dra-new.sock")
        old.stop()
        assert new.paths.endpoint.exists()
        assert new.paths.registration.exists()
        ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
        assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
        assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    finally:
        old.stop()
        if new is not None:
            new.stop()


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_prepare_acquires_writes_cdi_env_and_unprepare_releases(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver, version: str
) -> None:
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-1")])
    result = kubelet.node_prepare_resources([ref], version)  # type: ignore[arg-type]
    (dev,) = result[ref.uid].devices
    assert result[ref.uid].error == ""
    assert dev.request_names == ("qpu",)
    assert (dev.pool_name, dev.device_name) == (node_env.node, "ibm-torino-lane-1")
    assert dev.cdi_device_ids == (f"quantum.example.com/qpu={ref.uid}",)
    spec_file = agent.cdi.path(ref.uid)
    assert stat.S_IMODE(spec_file.stat().st_mode) == 0o600
    spec = json.loads(spec_file.read_text())
    assert spec["kind"] == "quantum.example.com/qpu"
    assert spec["devices"][0]["name"] == ref.uid
    env = agent.cdi.read_env(ref.uid)
    assert env["QRMI_JOB_QPU_RESOURCES"] == "fake_torino"
    assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service"
    assert env["SLURM_JOB_QPU_RESOURCES"] == "fake_torino"
    assert env["fake_torino_QRMI_IBM_QCS_IAM_APIKEY"] == IBM_KEY
    token = env["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"]
    session = _session(emu, token)
    assert session is not None
    assert session.is_open
    # The checkpoint holds the token but no credential.
    checkpoint = (node_env.root / "state" / CHECKPOINT_NAME).read_text()
    assert token in checkpoint
    assert not any(secret in checkpoint for secret in SECRETS)

    assert kubelet.node_unprepare_resources([ref], version) == {ref.uid: ""}  # type: ignore[arg-type]
    assert not _session(emu, token).is_open
    assert _session(emu, token).closed_by == "release"
    assert not spec_file.exists()
    assert agent.store is not None
    assert agent.store.claims() == []
    # Unprepare again (kubelet retry): nothing to do, still success, no second release.
    releases = len(emu.state.requests(f"sessions/{token}"))
    assert kubelet.node_unprepare_resources([ref], version) == {ref.uid: ""}  # type: ignore[arg-type]
    assert len(emu.state.requests(f"sessions/{token}")) == releases


def test_claim_on_a_shared_backend_is_prepared_from_the_operators_pool(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    """Shared (cloud) backends live in the operator's cluster-wide pool ``shared/<name>``;
    the node that runs the pod acquires them, and refuses a device from the wrong pool."""
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    uid = str(uuid.uuid4())
    claims.put_claim(
        allocated_claim(
            NS, "cloud", uid, [("qpu", "ibm-shared-lane-0")], shared_pool_name("ibm-shared")
        )
    )
    ref = ClaimRef(NS, uid, "cloud")
    result = kubelet.node_prepare_resources([ref])
    assert result[uid].error == ""
    (dev,) = result[uid].devices
    assert dev.pool_name == "shared/ibm-shared"
    token = agent.cdi.read_env(uid)["fake_nairobi_QRMI_JOB_ACQUISITION_TOKEN"]
    assert _session(emu, token).is_open
    assert kubelet.node_unprepare_resources([ref]) == {uid: ""}
    assert _session(emu, token).closed_by == "release"

    # In the node's pool, where a shared backend's devices never are:
    wrong = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-shared-lane-0")])
    out = kubelet.node_prepare_resources([wrong])
    assert "served from pool 'shared/ibm-shared'" in out[wrong.uid].error
    assert _open_sessions(emu, "fake_nairobi") == []


def test_shared_claim_is_acquired_once_and_released_once(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-0")])
    before = len(emu.state.sessions("fake_torino"))
    answers: list[Any] = []

    def prepare() -> None:
        answers.append(kubelet.node_prepare_resources([ref])[ref.uid])

    threads = [threading.Thread(target=prepare) for _ in range(4)]  # two pods, retries
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(answers) == 4
    assert {a.error for a in answers} == {""}
    assert len({a.devices for a in answers}) == 1
    created = emu.state.sessions("fake_torino")[before:]
    assert len(created) == 1
    assert created[0].is_open
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert not _session(emu, created[0].id).is_open


def test_plugin_restart_keeps_prepared_claims(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet
) -> None:
    emu = node_env.emu
    first = start(node_env, claims)
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
    try:
        kubelet.wait_for_registration(DRIVER)
        prepared = kubelet.node_prepare_resources([ref])[ref.uid]
    finally:
        first.stop()
    token = first.cdi.read_env(ref.uid)["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    second = start(node_env, claims)
    try:
        kubelet.wait_for_registration(DRIVER, count=2)
        assert second.recovered["stale_boot"] == 0
        assert _session(emu, token).is_open
        again = kubelet.node_prepare_resources([ref])[ref.uid]
        assert again == prepared
        assert second.cdi.read_env(ref.uid)["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"] == token
        assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
        assert not _session(emu, token).is_open
    finally:
        second.stop()


def test_new_boot_id_releases_stale_acquisitions_and_cdi(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet
) -> None:
    emu = node_env.emu
    first = start(node_env, claims)
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
    try:
        kubelet.wait_for_registration(DRIVER)
        assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    finally:
        first.stop()
    token = first.cdi.read_env(ref.uid)["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    # An orphan CDI spec (written, then the node crashed before the checkpoint) goes too.
    first.cdi.write("orphan-uid", {"A": "b"})
    node_env.reboot()
    second = start(node_env, claims)
    try:
        assert second.recovered["stale_boot"] == 1
        assert second.recovered["cdi_orphans"] == 1
        assert not _session(emu, token).is_open
        assert second.cdi.claims() == set()
        assert second.store is not None
        assert second.store.claims() == []
        saved = read_snapshot(node_env.root / "state" / CHECKPOINT_NAME, Record, JOURNAL_VERSION)
        # The old boot's claim dropped, its release paid (what is known of backends stays).
        assert [k for k in saved if not k.startswith("known/")] == []
    finally:
        second.stop()


def test_half_prepared_claim_from_a_crash_is_released_at_start(
    node_env: DraNode, claims: StaticClaims
) -> None:
    emu = node_env.emu
    warm = start(node_env, claims)
    try:
        assert warm.registry is not None
        client = warm.registry.get("ibm-manila")
        assert client is not None
        assert client.client is not None
        token = client.client.acquire()  # what a crashed prepare left behind
    finally:
        warm.stop()
    store = StateStore(node_env.root / "state", read_boot_id(node_env.boot_id_file))
    store.load()
    store.put(
        ClaimRecord(
            uid="crashed",
            namespace=NS,
            name="c",
            boot_id=store.boot_id,
            owner=store.instance,  # an instance that has died (its owner lock is freed)
            phase=ClaimPhase.PREPARING,
            devices=[
                DeviceRecord(
                    request="qpu",
                    pool=node_env.node,
                    device="ibm-manila-lane-0",
                    backend="ibm-manila",
                    token=token,
                )
            ],
        )
    )
    store.close()
    agent = start(node_env, claims)
    try:
        assert agent.recovered["half_prepared"] == 1
        assert not _session(emu, token).is_open
        assert agent.store is not None
        assert agent.store.claims() == []
    finally:
        agent.stop()


def test_failures_name_the_problem_and_leave_nothing_behind(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    open_before = len(emu.state.open_sessions())
    cases = {
        "not configured on this node": [("qpu", "ibm-unknown-lane-0")],
        "has 2 lanes": [("qpu", "ibm-torino-lane-7")],
        "not a qpu-k8s device ID": [("qpu", "gpu-0")],
        "both QRMI resource 'fake_torino'": [
            ("a", "ibm-torino-lane-0"),
            ("b", "ibm-torino-lane-1"),
        ],
    }
    for needle, devices in cases.items():
        ref = put_allocated_claim(claims, node_env.node, devices)
        assert needle in kubelet.node_prepare_resources([ref])[ref.uid].error
    missing = ClaimRef(NS, str(uuid.uuid4()), "missing")
    assert "not found" in kubelet.node_prepare_resources([missing])[missing.uid].error
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
    recreated = ClaimRef(NS, str(uuid.uuid4()), ref.name)
    assert "recreated" in kubelet.node_prepare_resources([recreated])[recreated.uid].error
    # Vendor failure at acquire: rolled back, the error names the device.
    emu.set_fault("error5xx", "fake_manila")
    try:
        devices = [("a", "ibm-torino-lane-0"), ("b", "ibm-manila-lane-0")]
        ref = put_allocated_claim(claims, node_env.node, devices)
        error = kubelet.node_prepare_resources([ref])[ref.uid].error
        assert "device ibm-manila-lane-0" in error
    finally:
        emu.clear_faults()
    assert len(emu.state.open_sessions()) == open_before  # torino's session was released
    assert agent.cdi.claims() == set()
    assert agent.store is not None
    assert agent.store.claims() == []


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"sessionMode": "exclusive"}, "parameters.sessionMode: Input should be 'dedicated'"),
        ({"sessionMaxTtlSeconds": "600"}, "parameters.sessionMaxTtlSeconds: Input should be"),
        ({"sessionMaxTtlSeconds": 10}, "sessionMaxTtlSeconds: Input should be greater"),
        ({"sesionMode": "batch"}, "parameters.sesionMode: unknown field"),
        ({"credentialsSecretRef": {"name": "a", "namespace": "b"}}, "namespace: unknown field"),
    ],
)
def test_bad_parameters_fail_prepare_naming_the_field(  # noqa: PLR0917
    node_env: DraNode,
    claims: StaticClaims,
    kubelet: FakeDRAKubelet,
    agent: DraDriver,
    params: dict[str, Any],
    needle: str,
) -> None:
    kubelet.wait_for_registration(DRIVER)
    config = [params_config(**params)]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")], config)
    error = kubelet.node_prepare_resources([ref])[ref.uid].error
    assert "status.allocation.devices.config[0].opaque.parameters" in error
    assert needle in error


def test_session_parameters_and_per_claim_credentials(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    claims.put_secret(NS, "alice-ibm", {"QRMI_IBM_QCS_IAM_APIKEY": USER_KEY, "other": "x"})
    config = [
        params_config(
            "qpu",
            sessionMode="batch",
            sessionMaxTtlSeconds=600,
            credentialsSecretRef={"name": "alice-ibm"},
        )
    ]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-0")], config)
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    env = agent.cdi.read_env(ref.uid)
    assert env["fake_torino_QRMI_IBM_QCS_IAM_APIKEY"] == USER_KEY
    assert env["fake_torino_QRMI_IBM_QCS_SESSION_MODE"] == "batch"
    session = _session(emu, env["fake_torino_QRMI_JOB_ACQUISITION_TOKEN"])
    assert (session.mode, session.max_ttl) == ("batch", 600)
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}
    assert not _session(emu, session.id).is_open

    bad = [params_config(credentialsSecretRef={"name": "nobody"})]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-0")], bad)
    error = kubelet.node_prepare_resources([ref])[ref.uid].error
    assert "credentialsSecretRef: Secret team-a/nobody not found" in error
    claims.put_secret(NS, "wrong", {"QRMI_IBM_QCS_IAM_APIKEY": "not-a-valid-key-123"})
    wrong = [params_config(credentialsSecretRef={"name": "wrong"})]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-0")], wrong)
    error = kubelet.node_prepare_resources([ref])[ref.uid].error
    assert "device ibm-torino-lane-0" in error
    assert "not-a-valid-key-123" not in error
    pasqal = [params_config(sessionMode="batch")]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "pasqal-fresnel-lane-0")], pasqal)
    error = kubelet.node_prepare_resources([ref])[ref.uid].error
    assert "sessionMode: backend 'pasqal-fresnel' (type pasqal-cloud) has no sessions" in error


def test_claim_with_two_backends_gets_one_env(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    kubelet.wait_for_registration(DRIVER)
    ref = put_allocated_claim(
        claims, node_env.node, [("ibm", "ibm-manila-lane-0"), ("atoms", "pasqal-fresnel-lane-0")]
    )
    result = kubelet.node_prepare_resources([ref])[ref.uid]
    assert result.error == ""
    assert [d.request_names for d in result.devices] == [("ibm",), ("atoms",)]
    assert {d.cdi_device_ids for d in result.devices} == {(f"quantum.example.com/qpu={ref.uid}",)}
    env = agent.cdi.read_env(ref.uid)
    assert env["QRMI_JOB_QPU_RESOURCES"] == "fake_manila,FRESNEL"
    assert env["QRMI_JOB_QPU_TYPES"] == "ibm-quantum-compute-service,pasqal-cloud"
    assert "FRESNEL_QRMI_JOB_ACQUISITION_TOKEN" in env
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}


@pytest.mark.parametrize("version", ["v1alpha1", "v1"])
def test_health_stream_follows_the_backend(
    node_env: DraNode, kubelet: FakeDRAKubelet, agent: DraDriver, version: str
) -> None:
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    assert agent.registry is not None
    registry = agent.registry
    with kubelet.watch_health(version=version) as watch:  # type: ignore[arg-type]
        key = (node_env.node, "ibm-manila-lane-0")
        registry.probe_now("ibm-manila")
        watch.wait_for(lambda d: d.get(key) is not None and d[key].health == "HEALTHY", 10)
        names = {k[1] for k in watch.latest}
        assert "pasqal-fresnel-lane-0" in names
        assert "ibm-torino-lane-1" in names
        # A shared backend is published by the operator, but its health is reported here
        # too, under the operator's cluster-wide pool, since this node prepares it.
        assert (shared_pool_name("ibm-shared"), "ibm-shared-lane-0") in watch.latest
        emu.set_online("fake_manila", False, reason="maintenance window")
        try:
            registry.probe_now("ibm-manila")
            state = watch.wait_for(
                lambda d: d[key].health == "UNHEALTHY" if key in d else False, 10
            )[key]
            assert "maintenance window" in state.message
        finally:
            emu.set_online("fake_manila", True)
        registry.probe_now("ibm-manila")
        watch.wait_for(lambda d: d[key].health == "HEALTHY", 10)


def test_metrics_count_calls_and_results(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    kubelet.wait_for_registration(DRIVER)
    ok_before = sample("qpu_k8s_dra_claims_total", operation="prepare", result="ok")
    bad_before = sample("qpu_k8s_dra_claims_total", operation="prepare", result="claim")
    calls_before = sample(
        "qpu_k8s_dra_call_duration_seconds_count", operation="prepare", api_version="v1"
    )
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
    kubelet.node_prepare_resources([ref])
    kubelet.node_prepare_resources([ClaimRef(NS, "nope", "nope")])
    assert sample("qpu_k8s_dra_claims_total", operation="prepare", result="ok") == ok_before + 1
    assert sample("qpu_k8s_dra_claims_total", operation="prepare", result="claim") == (
        bad_before + 1
    )
    assert sample(
        "qpu_k8s_dra_call_duration_seconds_count", operation="prepare", api_version="v1"
    ) == (calls_before + 2)
    assert sample("qpu_k8s_dra_prepared_claims") >= 1
    kubelet.node_unprepare_resources([ref])


def test_no_credential_in_logs_checkpoint_or_health(
    node_env: DraNode,
    claims: StaticClaims,
    kubelet: FakeDRAKubelet,
    agent: DraDriver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    kubelet.wait_for_registration(DRIVER)
    claims.put_secret(NS, "alice-ibm", {"QRMI_IBM_QCS_IAM_APIKEY": USER_KEY})
    config = [params_config(credentialsSecretRef={"name": "alice-ibm"})]
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-torino-lane-0")], config)
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    checkpoint = (node_env.root / "state" / CHECKPOINT_NAME).read_text()
    health = repr(agent.health.current()[1])
    kubelet.node_unprepare_resources([ref])
    text = caplog.text + checkpoint + health
    for secret in SECRETS:
        assert secret not in text


def test_transient_release_failure_fails_unprepare_until_the_vendor_is_back(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet, agent: DraDriver
) -> None:
    emu = node_env.emu
    kubelet.wait_for_registration(DRIVER)
    ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
    assert kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    token = agent.cdi.read_env(ref.uid)["fake_manila_QRMI_JOB_ACQUISITION_TOKEN"]
    emu.set_fault("error5xx", "fake_manila")
    try:
        error = kubelet.node_unprepare_resources([ref])[ref.uid]
        assert "release on backend 'ibm-manila' failed" in error
        # The spec goes first: no container may start with a token being released.
        assert not agent.cdi.exists(ref.uid)
        assert _session(emu, token).is_open
    finally:
        emu.clear_faults()
    assert kubelet.node_unprepare_resources([ref]) == {ref.uid: ""}  # the kubelet's retry
    assert not _session(emu, token).is_open
    assert not agent.cdi.exists(ref.uid)


def test_a_hanging_vendor_fails_prepare_within_the_deadline(
    node_env: DraNode, claims: StaticClaims, kubelet: FakeDRAKubelet
) -> None:
    emu = node_env.emu
    agent = start(node_env, claims, probe_timeout=5.0, acquire_timeout=1.0)
    try:
        kubelet.wait_for_registration(DRIVER)
        ref = put_allocated_claim(claims, node_env.node, [("qpu", "ibm-manila-lane-0")])
        emu.set_fault("hang", "fake_manila")
        try:
            error = kubelet.node_prepare_resources([ref])[ref.uid].error
        finally:
            emu.clear_faults()
        assert "no answer within 1s" in error
        assert agent.store is not None
        assert agent.store.claims() == []
        assert agent.cdi.claims() == set()
    finally:
        agent.stop()


def _published(agent: DraDriver) -> dict[str, Any]:
    """What the agent's slice sync would publish now: device name -> (attributes, taints)."""
    assert agent.registry is not None
    assert agent.calibration is not None
    publisher = SlicePublisher(
        client.ApiClient(), DRIVER, agent.pool, PoolScope.node(agent.pool)
    )  # never called: only its driver name is read
    slices = NodeSlices(
        agent.registry,
        agent.calibration,
        publisher,
        mode=UnhealthyMode.WITHDRAW,
        resync_seconds=60,
    )
    return {d.name: (d.attributes, d.taints) for d in slices.devices()}


def test_a_restart_under_a_hung_probe_keeps_publishing_what_was_known(
    node_env: DraNode, claims: StaticClaims
) -> None:
    """Issue 17.2: a restarted driver whose first probe hangs publishes the node's devices
    as they were, not an empty slice, until a probe says otherwise."""
    emu = node_env.emu
    first = start(node_env, claims)
    try:
        before = wait_for(
            lambda: (p := _published(first)) and "ibm-manila-lane-0" in p and p,
            30,
            "ibm-manila published with its attributes",
        )
    finally:
        first.stop()
    emu.set_fault("hang", "fake_manila")
    second = start(node_env, claims, probe_timeout=5.0)
    try:
        assert second.registry is not None
        manila = second.registry.snapshot()["ibm-manila"]
        now = _published(second)
        assert second.registry.snapshot()["ibm-manila"].health.status == "unknown"
        assert manila.health.status == "unknown"  # the probe was still hanging throughout
        assert now["ibm-manila-lane-0"] == before["ibm-manila-lane-0"]
        # The probe's deadline passes: now the vendor has said otherwise, and it is withdrawn.
        wait_for(lambda: "ibm-manila-lane-0" not in _published(second), 15, "withdrawn")
    finally:
        emu.clear_faults()
        second.stop()


class _GatedTarget:
    """The real client, except that ``target()`` waits for ``gate`` (a vendor whose
    calibration endpoint is slow while its status answers)."""

    def __init__(self, real: QuantumResourceClient, gate: threading.Event) -> None:
        self._real = real
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def target(self) -> Any:
        assert self._gate.wait(30), "the test never opened the gate"
        return self._real.target()


def test_a_device_is_published_only_once_target_has_answered(
    node_env: DraNode, claims: StaticClaims
) -> None:
    """Issue 12.10: a backend that is healthy but whose target() has not answered has no
    qubits or calibration yet, so a selector such as ``qubits >= 5`` could not evaluate its
    devices: it is not published until target() answers (the default withdraw policy)."""
    gate = threading.Event()
    cfg = node_env.agent_config()
    real = qrmi_client_factory(cfg.call_timeouts())

    def factory(backend: Any, creds: Any) -> QuantumResourceClient:
        return _GatedTarget(real(backend, creds), gate)  # type: ignore[return-value]

    agent = DraDriver(cfg, claims=claims, publish_slices=False, client_factory=factory)
    agent.start()
    try:
        assert agent.registry is not None
        registry = agent.registry
        wait_for(lambda: registry.snapshot()["ibm-manila"].health.healthy, 20, "manila probed")
        assert "ibm-manila-lane-0" not in _published(agent)  # healthy, not calibrated yet
        gate.set()
        attributes, taints = wait_for(
            lambda: _published(agent).get("ibm-manila-lane-0"), 20, "published after target()"
        )
        assert attributes["qubits"] == 5
        assert not taints
    finally:
        gate.set()
        agent.stop()
