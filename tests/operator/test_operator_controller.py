"""The controller and the kopf handlers, as functions, against an in-memory API.

The vendor is a fake client here (its answers set by each test); the real QRMI client and
the emulator are used by ``test_operator_probe_emulator.py`` and the API tier.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from datetime import timedelta
from typing import Any

import kopf
import pytest
import yaml

from qpu_k8s.core.qrmi_client import Health
from qpu_k8s.operator import shared_claims as sc
from qpu_k8s.operator.configmap import DATA_KEY
from qpu_k8s.operator.controller import Controller, OperatorConfig, RetryLater
from qpu_k8s.operator.handlers import build_registry, selector_filter
from qpu_k8s.operator.scheduler import clock
from testsupport.operator import FakeClients, FakeKube, FakeSlices, cr, ready_condition
from testsupport.waiting import until

NS = "qpu-system"
CM = (NS, "qpu-k8s-node-config")
TOKEN = "pasqal-token-controller-test-5x"
SPEC = {
    "resourceId": "EMU_MPS",
    "type": "pasqal-cloud",
    "lanes": 2,
    "config": {"QRMI_PASQAL_CLOUD_PROJECT_ID": "p1"},
    "credentialsSecretRef": {"name": "pasqal-creds"},
}


def make(
    kube: FakeKube, clients: FakeClients, dra: bool = False, **cfg: Any
) -> tuple[Controller, FakeSlices | None]:
    slices = FakeSlices(kube.log) if dra else None
    cfg = {"namespace": NS, "debounce": 0.01, "dra": dra, "probe_timeout": 0.5, **cfg}
    config = OperatorConfig(**cfg)
    clients.timeout = config.probe_timeout  # the clients carry the probe deadline
    return Controller(config, kube, client_factory=clients, slices=slices), slices  # type: ignore[arg-type]


def add(kube: FakeKube, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return kube.add_backend(cr(name, spec or SPEC))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_create_probes_writes_status_events_and_node_config() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu")

    async def scenario() -> None:
        ctl, _ = make(kube, clients)
        await ctl.start()
        try:
            ctl.observe(body)
            await until(
                lambda: ready_condition(kube.backends["emu"].get("status")).get("status") == "True"
            )
            await until(lambda: CM in kube.config_maps, what="node ConfigMap")
            assert ctl.health()["backends"] == 1
        finally:
            await ctl.stop()

    run(scenario())
    status = kube.backends["emu"]["status"]
    assert status["qubits"] == 7
    assert status["observedGeneration"] == 1
    assert clients.by_name["emu"].creds == {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN}
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Normal", "Online")]
    assert kube.events[0]["involvedObject"]["name"] == "emu"
    cfg = yaml.safe_load(kube.config_maps[CM]["data"][DATA_KEY])
    assert [b["name"] for b in cfg["backends"]] == ["emu"]
    everything = yaml.safe_dump([kube.backends, kube.events, kube.config_maps])
    assert TOKEN not in everything


def test_missing_secret_is_a_condition_then_recovers_when_created() -> None:
    kube, clients = FakeKube(), FakeClients()
    body = add(kube, "emu")

    async def scenario() -> None:
        ctl, _ = make(kube, clients, secret_retry=0.05)
        await ctl.start()
        try:
            ctl.observe(body)
            await until(
                lambda: (
                    ready_condition(kube.backends["emu"].get("status")).get("reason")
                    == "SecretNotFound"
                )
            )
            acc = ready_condition(kube.backends["emu"]["status"], "Accessible")
            assert (acc["status"], acc["reason"]) == ("False", "SecretNotFound")
            assert "pasqal-creds" in acc["message"]
            assert "QRMI_PASQAL_CLOUD_AUTH_TOKEN" in acc["message"]
            assert "emu" not in clients.by_name, "no vendor call without credentials"
            kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
            await until(
                lambda: ready_condition(kube.backends["emu"]["status"]).get("status") == "True"
            )
        finally:
            await ctl.stop()

    run(scenario())
    reasons = [(e["type"], e["reason"]) for e in kube.events]
    assert reasons[:2] == [("Warning", "SecretNotFound")] * 2
    assert ("Normal", "Online") in reasons


def test_vendor_hang_becomes_probe_timeout_without_blocking_other_backends() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    release = threading.Event()

    def setup(c: Any) -> None:
        if c.backend.name == "stuck":
            c.vendor_health = lambda: (release.wait(30), Health(True, "online"))[1]

    clients.setup = setup
    stuck, fine = add(kube, "stuck"), add(kube, "fine")

    async def scenario() -> None:
        ctl, _ = make(kube, clients)
        await ctl.start()
        try:
            ctl.observe(stuck)
            ctl.observe(fine)
            await until(
                lambda: ready_condition(kube.backends["fine"].get("status")).get("status") == "True"
            )
            await until(
                lambda: (
                    ready_condition(kube.backends["stuck"].get("status")).get("reason")
                    == "ProbeTimeout"
                )
            )
        finally:
            release.set()
            await ctl.stop()

    run(scenario())
    assert "did not answer" in ready_condition(kube.backends["stuck"]["status"])["message"]


def test_probe_concurrency_is_bounded() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    lock = threading.Lock()
    running = [0, 0]  # now, max
    gate = threading.Event()

    def setup(c: Any) -> None:
        def health() -> Health:
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
            gate.wait(5)
            with lock:
                running[0] -= 1
            return Health(True, "online")

        c.vendor_health = health

    clients.setup = setup
    bodies = [add(kube, f"b{i}") for i in range(10)]

    async def scenario() -> None:
        ctl, _ = make(kube, clients, probe_concurrency=3, probe_timeout=5)
        await ctl.start()
        try:
            for b in bodies:
                ctl.observe(b)
            await until(lambda: running[0] == 3, what="3 probes in flight")
            gate.set()
            await until(
                lambda: all(
                    ready_condition(o.get("status")).get("status") == "True"
                    for o in kube.backends.values()
                )
            )
        finally:
            gate.set()
            await ctl.stop()

    run(scenario())
    assert running[1] == 3


def test_invalid_spec_is_reported_not_probed_and_kept_out_of_node_config() -> None:
    kube, clients = FakeKube(), FakeClients()
    bad = add(kube, "bad", {**SPEC, "access": "node-bound"})

    async def scenario() -> None:
        ctl, _ = make(kube, clients)
        await ctl.start()
        try:
            ctl.observe(bad)
            await until(
                lambda: (
                    ready_condition(kube.backends["bad"].get("status")).get("reason")
                    == "InvalidSpec"
                )
            )
            await until(lambda: CM in kube.config_maps)
        finally:
            await ctl.stop()

    run(scenario())
    assert "spec.nodeSelector" in ready_condition(kube.backends["bad"]["status"])["message"]
    assert clients.by_name == {}
    assert yaml.safe_load(kube.config_maps[CM]["data"][DATA_KEY]) == {"backends": []}


def test_resume_keeps_the_probe_rhythm_stored_in_status() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu", {**SPEC, "probeIntervalSeconds": 600})

    async def scenario() -> None:
        ctl, _ = make(kube, clients)
        await ctl.start()
        try:
            ctl.observe(body)
            await until(lambda: "status" in kube.backends["emu"])
        finally:
            await ctl.stop()
        # A new operator process: the status says it was probed just now, same generation.
        clients.by_name.clear()
        ctl2, _ = make(kube, clients)
        await ctl2.start()
        try:
            e = ctl2.observe(kube.backends["emu"])
            assert e.due - clock() > 500
            assert e.status.condition("Ready") is not None  # type: ignore[arg-type]
        finally:
            await ctl2.stop()
        # Another start, after a spec change made while no operator ran (a new generation,
        # the status of the old one): probed at once.
        ctl3, _ = make(kube, clients)
        await ctl3.start()
        try:
            changed = {
                **kube.backends["emu"],
                "metadata": {**kube.backends["emu"]["metadata"], "generation": 2},
            }
            e = ctl3.observe(changed)
            assert e.due <= clock()
        finally:
            await ctl3.stop()

    run(scenario())


def test_shared_claims_follow_namespace_labels_and_count_reservations() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu")
    kube.add_namespace("team-a", {"shared.quantum.example.com/emu": "true"})
    kube.add_namespace("team-b")

    async def scenario() -> None:
        ctl, slices = make(kube, clients, dra=True)
        await ctl.start()
        try:
            ctl.observe(body)
            await until(lambda: ("team-a", "qpu-emu") in kube.claims, what="shared claim")
            assert slices is not None
            await until(lambda: slices.published.get("emu") == 2, what="slice")
            # Pods take the claim: live acquisitions show up in status.
            kube.claims[("team-a", "qpu-emu")]["status"] = {
                "reservedFor": [{"name": "p", "uid": "1"}]
            }
            ctl.claims_changed()
            await until(lambda: kube.backends["emu"].get("status", {}).get("liveAcquisitions") == 1)
            assert kube.backends["emu"]["status"]["sharedClaims"] == 1
            # Label moves from team-a to team-b.
            kube.claims[("team-a", "qpu-emu")].pop("status")
            kube.namespaces["team-a"]["metadata"]["labels"] = {}
            kube.add_namespace("team-b", {"shared.quantum.example.com/emu": "true"})
            ctl.namespace_event(kube.namespaces["team-a"], "MODIFIED")
            ctl.namespace_event(kube.namespaces["team-b"], "MODIFIED")
            await until(lambda: set(kube.claims) == {("team-b", "qpu-emu")}, what="claim moved")
        finally:
            await ctl.stop()

    run(scenario())
    claim = kube.claims[("team-b", "qpu-emu")]
    assert claim["metadata"]["labels"][sc.BACKEND_LABEL] == "emu"


def test_finalizer_order_slices_claims_then_node_config() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu")
    kube.add_namespace("team-a", {"shared.quantum.example.com/emu": "true"})

    async def scenario() -> None:
        ctl, _ = make(kube, clients, dra=True, deletion_grace=60)
        await ctl.start()
        try:
            ctl.observe(body)
            await until(lambda: ("team-a", "qpu-emu") in kube.claims)
            await until(
                lambda: "emu" in kube.config_maps.get(CM, {}).get("data", {}).get(DATA_KEY, "")
            )
            kube.claims[("team-a", "qpu-emu")]["status"] = {
                "reservedFor": [{"name": "p", "uid": "1"}]
            }
            kube.backends["emu"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            kube.log.clear()
            with pytest.raises(RetryLater, match="1 shared claim"):
                await ctl.finalize(kube.backends["emu"], runtime=1.0)
            assert "emu" in kube.config_maps[CM]["data"][DATA_KEY], "config kept while claims live"
            # The pod went away: the claim controller lets the claim go.
            del kube.claims[("team-a", "qpu-emu")]
            await ctl.finalize(kube.backends["emu"], runtime=3.0)
        finally:
            await ctl.stop()

    run(scenario())
    kinds = [entry[0] for entry in kube.log if entry[0] != "status"]
    assert kinds.index("slice-remove") < kinds.index("claim-delete") < kinds.index("configmap")
    assert yaml.safe_load(kube.config_maps[CM]["data"][DATA_KEY]) == {"backends": []}


def test_finalizer_gives_up_waiting_after_the_grace_period() -> None:
    kube, clients = FakeKube(), FakeClients()
    body = add(kube, "emu")
    kube.add_namespace("team-a", {"shared.quantum.example.com/emu": "true"})
    kube.claims[("team-a", "qpu-emu")] = {
        **sc.claim_body("emu", "team-a"),
        "status": {"reservedFor": [{"name": "p", "uid": "1"}]},
    }

    async def scenario() -> None:
        ctl, _ = make(kube, clients, dra=True, deletion_grace=10)
        await ctl.start()
        try:
            ctl.observe(body)
            kube.backends["emu"]["metadata"]["deletionTimestamp"] = "x"
            await ctl.finalize(kube.backends["emu"], runtime=11.0)
        finally:
            await ctl.stop()

    run(scenario())
    assert "emu" not in kube.config_maps[CM]["data"][DATA_KEY]


def test_handlers_as_functions_and_apiserver_outage_is_a_retry() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu")
    ctl, _ = make(kube, clients, dra=True)
    reg = build_registry(ctl)
    fns = {h.id: h.fn for h in reg._changing.get_all_handlers()}
    # Only the deletion is kopf's (its finalizer); backends are watched by an event handler.
    assert set(fns) == {"delete"}, fns.keys()
    watching = {h.id: h.fn for h in reg._watching.get_all_handlers()}
    assert {"backend", "namespace", "claim"} <= watching.keys()

    async def scenario() -> None:
        await ctl.start()
        try:
            await watching["backend"](body=body, type="ADDED")
            await until(lambda: "status" in kube.backends["emu"])
            kube.down = True
            with pytest.raises(kopf.TemporaryError):
                await fns["delete"](body=body, runtime=timedelta(seconds=1))
            assert ctl.health()["backends"] == 1  # loops still alive while the apiserver is down
            kube.down = False
            await fns["delete"](body=body, runtime=timedelta(seconds=2))
        finally:
            await ctl.stop()

    run(scenario())
    assert "emu" not in ctl.entries


def test_status_write_failures_are_retried_on_the_next_probe() -> None:
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu", {**SPEC, "probeIntervalSeconds": 5})

    async def scenario() -> None:
        ctl, _ = make(kube, clients, secret_ttl=0)
        await ctl.start()
        try:
            kube.down = True
            ctl.observe(body)
            await until(
                lambda: (
                    ctl.entries["emu"].status.state is not None or ctl.sync.last_error is not None
                )
            )
            kube.down = False
            # No new event: the next probe (every 5 s) writes the status again.
            await until(
                lambda: ready_condition(kube.backends["emu"].get("status")).get("status") == "True",
                within=15,
                what="the status written by the next probe",
            )
        finally:
            await ctl.stop()

    run(scenario())


def test_health_fails_when_a_loop_died() -> None:
    kube, clients = FakeKube(), FakeClients()

    async def scenario() -> None:
        ctl, _ = make(kube, clients)
        await ctl.start()
        ctl._tasks[0].cancel()
        await until(ctl._tasks[0].done)
        with pytest.raises(RuntimeError, match="qpu-probe-scheduler"):
            ctl.health()
        await ctl.stop()

    run(scenario())


def test_backend_selector_filter() -> None:
    assert selector_filter("") is None
    assert selector_filter("a=b,c") == {"a": "b", "c": kopf.PRESENT}
    with pytest.raises(ValueError, match="only k=v"):
        selector_filter("a!=b")


def test_backend_events_reschedule_only_for_a_new_spec() -> None:
    """The operator's own status writes come back as watch events: they must not trigger a
    probe (a loop), while a new generation is probed at once and a deleting backend is left
    to the deletion handler."""
    kube, clients = FakeKube(), FakeClients()
    kube.add_secret(NS, "pasqal-creds", {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": TOKEN})
    body = add(kube, "emu", {**SPEC, "probeIntervalSeconds": 600})
    ctl, _ = make(kube, clients)
    handler = {h.id: h.fn for h in build_registry(ctl)._watching.get_all_handlers()}["backend"]

    async def scenario() -> None:
        await ctl.start()
        try:
            await handler(body=body, type="ADDED")
            await until(lambda: "status" in kube.backends["emu"])
            await until(lambda: ctl.entries["emu"].due - clock() > 500)
            probes = len(clients.by_name["emu"].calls)
            # The status write's own event: nothing to do.
            await handler(body=kube.backends["emu"], type="MODIFIED")
            assert ctl.entries["emu"].due - clock() > 500
            # A deleting backend is the finalizer's.
            deleting = copy.deepcopy(kube.backends["emu"])
            deleting["metadata"]["generation"] = 5
            deleting["metadata"]["deletionTimestamp"] = "2026-12-05T00:00:00Z"
            await handler(body=deleting, type="MODIFIED")
            assert ctl.entries["emu"].generation == 1
            # A new spec: probed at once.
            changed = copy.deepcopy(kube.backends["emu"])
            changed["metadata"]["generation"] = 2
            await handler(body=changed, type="MODIFIED")
            await until(lambda: len(clients.by_name["emu"].calls) > probes)
            assert ctl.entries["emu"].generation == 2
        finally:
            await ctl.stop()

    run(scenario())
