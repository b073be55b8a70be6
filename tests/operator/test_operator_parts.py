"""Unit tests of the operator's parts: Secrets, node ConfigMap, shared claims, slice devices."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from qpu_k8s.core.credentials import REDACTOR, redact
from qpu_k8s.core.model import parse_backend, parse_backend_config
from qpu_k8s.operator import configmap
from qpu_k8s.operator import shared_claims as sc
from qpu_k8s.operator.handlers import MAX_CONNECTIONS, limited_session
from qpu_k8s.operator.kube import ApiStatusError
from qpu_k8s.operator.reconcile import SecretProblem, SecretReason
from qpu_k8s.operator.secrets import SecretReader, decode
from qpu_k8s.operator.slices import devices_for, pool_name, scope_of
from qpu_k8s.operator.status import BackendStatus, Condition
from qpu_k8s.resourceslices.policy import UnhealthyMode
from testsupport.operator import cr

PASQAL = {
    "resourceId": "FRESNEL",
    "type": "pasqal-cloud",
    "config": {"QRMI_PASQAL_CLOUD_PROJECT_ID": "p1"},
    "credentialsSecretRef": {"name": "pasqal-creds"},
}
BACKEND = parse_backend({"name": "fresnel", "spec": PASQAL})


def _b64(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


class Fetch:
    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.calls.append((namespace, name))
        answer = self.answers.get((namespace, name), ApiStatusError(404, "HTTP 404"))
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


# -- secrets -------------------------------------------------------------------------------
def test_secret_read_resolves_and_registers_for_redaction() -> None:
    token = "tok-unit-7f3c9a"
    fetch = Fetch(
        {("qpu", "pasqal-creds"): _b64({"QRMI_PASQAL_CLOUD_AUTH_TOKEN": token, "x": "y1234"})}
    )
    reader = SecretReader(fetch, "qpu")
    creds = asyncio.run(reader.credentials(BACKEND))
    assert creds == {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": token}
    assert redact(f"header {token}") == "header [REDACTED]"
    # Cached: a second read inside the TTL does not call the API.
    asyncio.run(reader.credentials(BACKEND))
    assert fetch.calls == [("qpu", "pasqal-creds")]


def test_missing_secret_names_it_and_the_keys_needed() -> None:
    reader = SecretReader(Fetch({}), "qpu-system")
    with pytest.raises(SecretProblem) as err:
        asyncio.run(reader.credentials(BACKEND))
    assert err.value.reason is SecretReason.NOT_FOUND
    msg = err.value.message
    assert "'pasqal-creds'" in msg
    assert "'qpu-system'" in msg
    assert "QRMI_PASQAL_CLOUD_AUTH_TOKEN" in msg


def test_incomplete_and_forbidden_secrets() -> None:
    secret_value = "only-the-id-9q8w7e"
    fetch = Fetch(
        {
            ("qpu", "pasqal-creds"): _b64({"QRMI_PASQAL_CLOUD_CLIENT_ID": secret_value}),
            ("other", "pasqal-creds"): ApiStatusError(403, "HTTP 403 Forbidden"),
        }
    )
    with pytest.raises(SecretProblem) as err:
        asyncio.run(SecretReader(fetch, "qpu").credentials(BACKEND))
    assert err.value.reason is SecretReason.INCOMPLETE
    assert "QRMI_PASQAL_CLOUD_CLIENT_SECRET" in err.value.message
    assert secret_value not in err.value.message
    with pytest.raises(SecretProblem) as err2:
        asyncio.run(SecretReader(fetch, "other").credentials(BACKEND))
    assert err2.value.reason is SecretReason.FORBIDDEN


def test_secret_namespace_from_the_ref_wins() -> None:
    spec = {**PASQAL, "credentialsSecretRef": {"name": "pasqal-creds", "namespace": "vault"}}
    fetch = Fetch({("vault", "pasqal-creds"): _b64({"QRMI_PASQAL_CLOUD_AUTH_TOKEN": "abcd1234"})})
    asyncio.run(SecretReader(fetch, "qpu").credentials(parse_backend({"name": "f", "spec": spec})))
    assert fetch.calls == [("vault", "pasqal-creds")]


def test_decode_skips_garbage_without_echoing_it() -> None:
    assert decode({"A": "!!!not-base64", "B": base64.b64encode(b"ok-value").decode()}) == {
        "B": "ok-value"
    }
    assert "ok-value" in REDACTOR._values


# -- node ConfigMap --------------------------------------------------------------------------
def test_config_map_renders_valid_backends_only() -> None:
    good = cr("fresnel", PASQAL)
    bad = cr("broken", {**PASQAL, "access": "node-bound"})
    gone = {
        **cr("old", PASQAL),
        "metadata": {"name": "old", "deletionTimestamp": "2026-01-01T00:00:00Z"},
    }
    leaving = {**cr("leaving", PASQAL), "metadata": {"name": "leaving", "deletionTimestamp": "x"}}
    sel = configmap.select([good, bad, gone, leaving], released={"old"})
    assert [b.name for b in sel.backends] == ["fresnel", "leaving"]
    assert sel.invalid["broken"][0][0] == "spec.nodeSelector"
    assert sel.removed == ["old"]
    body = configmap.render("qpu-k8s-node-config", "qpu", sel.backends)
    parsed = parse_backend_config(body["data"][configmap.DATA_KEY])
    assert [b.name for b in parsed.backends] == ["fresnel", "leaving"]
    assert body["metadata"]["annotations"][configmap.HASH_ANNOTATION]
    kubernetes_validate.validate(body, "1.34", strict=True)
    assert configmap.same_content(body, body)
    assert not configmap.same_content(None, body)


def test_config_map_refuses_to_exceed_the_size_limit() -> None:
    spec = {**PASQAL, "config": {**PASQAL["config"], "QRMI_PASQAL_CLOUD_BASE_URL": "x" * 4000}}
    many = [parse_backend({"name": f"b{i}", "spec": spec}) for i in range(300)]
    with pytest.raises(configmap.ConfigTooLargeError, match="limit"):
        configmap.render("cm", "ns", many)


# -- shared claims ---------------------------------------------------------------------------
def _ns(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def test_requested_backends_from_namespace_labels() -> None:
    labels = {
        "shared.quantum.example.com/ibm-torino": "true",
        "shared.quantum.example.com/fresnel": "false",
        "shared.quantum.example.com/emu": "yes",
        "team": "a",
    }
    assert sc.requested(labels) == {"ibm-torino", "emu"}


def test_claim_body_is_a_valid_resource_claim() -> None:
    body = sc.claim_body("ibm-torino", "team-a")
    kubernetes_validate.validate(body, "1.34", strict=True)
    sel = body["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]["expression"]
    assert sel == 'device.attributes["qpu.quantum.example.com"].backend == "ibm-torino"'
    assert body["metadata"]["name"] == "qpu-ibm-torino"
    # The schema above has no enums: the real apiserver (1.34+) knows only these modes and
    # refused "ExactlyOne" with a 422, so no shared claim was ever created (found on 1.37).
    # Spelled out as the apiserver defaults them, so the stored spec equals ours and the
    # operator does not take its own claim for outdated.
    exactly = body["spec"]["devices"]["requests"][0]["exactly"]
    assert (exactly["allocationMode"], exactly["count"]) == ("ExactCount", 1)


def test_plan_creates_deletes_and_holds() -> None:
    namespaces = [
        _ns(
            "a",
            **{"shared.quantum.example.com/t": "true", "shared.quantum.example.com/gone": "true"},
        ),
        _ns("b"),
    ]
    stale = sc.claim_body("t", "b")  # label removed from b
    in_use = sc.claim_body("f", "a")
    in_use["spec"]["devices"]["requests"][0]["name"] = "old"
    in_use["status"] = {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u"}]}
    namespaces[0]["metadata"]["labels"]["shared.quantum.example.com/f"] = "true"
    p = sc.plan(namespaces, {"t", "f"}, [stale, in_use])
    assert p.create == [("a", "t")]
    assert p.delete == [("b", "qpu-t")]
    assert p.held == [("a", "qpu-f")]
    counts = sc.count([in_use, sc.claim_body("t", "a")])
    assert counts == {"f": sc.Counts(1, 1), "t": sc.Counts(1, 0)}


# -- slice devices ---------------------------------------------------------------------------
def _status(ready: bool, calibrated: bool = True) -> BackendStatus:
    c = Condition(
        type="Ready",
        status="True" if ready else "False",
        reason="Online" if ready else "ProbeTimeout",
        last_transition_time="2026-01-01T00:00:00Z",
    )
    return BackendStatus(
        conditions=[c],
        state="online" if ready else "timeout",
        attributes={"qubits": 80, "vendor": "pasqal", "backend": "fresnel"},
        last_target_time="2026-01-01T00:00:00Z" if calibrated else None,
    )


def test_devices_per_lane_and_health_policy() -> None:
    b = parse_backend({"name": "fresnel", "spec": {**PASQAL, "lanes": 3}})
    devs = devices_for(b, _status(True), "qpu.quantum.example.com")
    assert [d.name for d in devs] == ["fresnel-lane-0", "fresnel-lane-1", "fresnel-lane-2"]
    assert [d.attributes["lane"] for d in devs] == [0, 1, 2]
    assert devs[0].attributes["qubits"] == 80
    assert not devs[0].taints
    assert devices_for(b, _status(False), "qpu.quantum.example.com") == []
    tainted = devices_for(b, _status(False), "qpu.quantum.example.com", UnhealthyMode.TAINT)
    assert tainted[0].taints[0].to_api() == {
        "key": "qpu.quantum.example.com/unhealthy",
        "value": "timeout",
        "effect": "NoSchedule",
    }
    # Ready, but target() has not answered yet: its attributes would promise nothing.
    assert devices_for(b, _status(True, calibrated=False), "qpu.quantum.example.com") == []
    assert pool_name("fresnel") == "shared/fresnel"
    assert scope_of(b).spec_fields() == {"allNodes": True}
    sel = parse_backend({"name": "f", "spec": {**PASQAL, "nodeSelector": {"zone": "a"}}})
    assert "nodeSelector" in scope_of(sel).spec_fields()


def test_examples_readme_mentions_every_file() -> None:
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "backends"
    readme = (folder / "README.md").read_text()
    for f in folder.glob("*.yaml"):
        assert f.name in readme
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc["spec"].get("credentialsSecretRef"), f"{f.name}: names its Secret"


# -- the cached slice writer -------------------------------------------------------------------
class _Custom:
    """Cluster-scoped resourceslices in memory, with resourceVersions and call counts."""

    def __init__(self) -> None:
        self.objs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.rv = 0

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        obj["spec"]["devices"] = [{**d, "capacity": None} for d in obj["spec"]["devices"]]
        self.objs[obj["metadata"]["name"]] = obj
        return obj

    def list_cluster_custom_object(self, *a: Any, label_selector: str = "", **k: Any) -> Any:
        self.calls.append("list")
        return {"items": list(self.objs.values())}

    def create_cluster_custom_object(self, g: str, v: str, p: str, body: Any, **k: Any) -> Any:
        self.calls.append("create")
        return self._bump(body)

    def replace_cluster_custom_object(
        self, g: str, v: str, p: str, n: str, body: Any, **k: Any
    ) -> Any:
        self.calls.append("replace")
        assert body["metadata"]["resourceVersion"] == self.objs[n]["metadata"]["resourceVersion"]
        return self._bump(body)

    def delete_cluster_custom_object(self, g: str, v: str, p: str, n: str, **k: Any) -> Any:
        self.calls.append("delete")
        self.objs.pop(n, None)


class _Kube:
    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.custom = _Custom()
        self._pool = ThreadPoolExecutor(2)
        self.timeout = 5.0


def test_slice_writer_writes_only_changes_and_keeps_counting_generations() -> None:
    from qpu_k8s.operator.slices import BackendSlices

    kube = _Kube()
    b = parse_backend({"name": "fresnel", "spec": {**PASQAL, "lanes": 2}})

    async def scenario() -> list[int]:
        pub = BackendSlices(kube, "qpu.quantum.example.com")  # type: ignore[arg-type]
        gens = []
        for status, written in [
            (_status(True), True),
            (_status(True), False),  # unchanged (server-added empty fields ignored)
            (_status(False), True),  # withdrawn: the slice is deleted
            (_status(False), False),
            (_status(True), True),  # back, with a higher generation than before
        ]:
            assert await pub.publish(b, status, "uid-1") is written
            objs = list(kube.custom.objs.values())
            gens.append(objs[0]["spec"]["pool"]["generation"] if objs else 0)
        await pub.remove("fresnel")
        return gens

    assert asyncio.run(scenario()) == [1, 1, 0, 0, 2]
    assert kube.custom.calls == ["list", "create", "delete", "create", "delete"]
    assert kube.custom.objs == {}


def test_cli_flags_have_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from qpu_k8s.operator import cli

    monkeypatch.setenv("QPU_K8S_NODE_CONFIG_MAP", "from-env")
    monkeypatch.setenv("QPU_K8S_NAMESPACE", "qpu-env")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--probe-timeout", "3", "--unhealthy", "taint"])
    assert (args.node_config_map, args.namespace) == ("from-env", "qpu-env")
    assert (args.probe_timeout, args.unhealthy, args.dra) == (3.0, "taint", "auto")
    assert args.liveness_address == "http://0.0.0.0:8080/healthz"


def test_kopf_session_keeps_to_its_connection_limit() -> None:
    """100 concurrent requests through the operator's kopf session reach a local server over
    at most MAX_CONNECTIONS connections, carrying the login's bearer token."""

    async def scenario() -> tuple[int, set[str]]:
        peers: set[object] = set()
        auth: set[str] = set()
        gate, reached = asyncio.Event(), asyncio.Event()

        async def handle(request: web.Request) -> web.Response:
            peers.add(request.transport.get_extra_info("peername") if request.transport else None)
            auth.add(request.headers.get("Authorization", ""))
            if len(peers) >= MAX_CONNECTIONS:
                reached.set()
            await gate.wait()  # hold every request open so connections cannot be reused
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", scheme="Bearer", token="t0k")
        ctx = limited_session(info)
        session: aiohttp.ClientSession = ctx.aiohttp_session
        try:

            async def one() -> None:
                async with session.get(f"{ctx.server}/") as resp:
                    await resp.read()

            calls = [asyncio.create_task(one()) for _ in range(100)]
            await asyncio.wait_for(reached.wait(), 10)
            opened = len(peers)
            gate.set()
            await asyncio.gather(*calls)
        finally:
            await session.close()
            await runner.cleanup()
        return max(opened, len(peers)), auth

    opened, auth = asyncio.run(scenario())
    assert opened == MAX_CONNECTIONS, opened
    assert auth == {"Bearer t0k"}
