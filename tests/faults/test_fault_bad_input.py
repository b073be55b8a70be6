"""Fault 6: bad input. Every mistake gets an error naming the field and the fix, the agent
keeps running with what it had (no crash loop), and no credential value is ever echoed.

Both agents run as real processes; each case is fed to the one running process in turn.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
import yaml

from qpu_k8s.core.model import MAX_CONFIG_BYTES
from qpu_k8s.deviceplugin.state import CHECKPOINT_NAME as DP_CHECKPOINT
from qpu_k8s.dra.state import CHECKPOINT_NAME as DRA_CHECKPOINT
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    ClaimRef,
    DeviceState,
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
)
from testsupport.deviceplugin import Layout, StartPlugin
from testsupport.dra import NS, DraNode, StartDra, params_config
from testsupport.emulator import IBM_KEY, SECRETS, open_tokens, write_secret
from testsupport.faults import ibm, record_result
from testsupport.names import DRIVER, RESOURCE
from testsupport.waiting import wait_for

INVALID = "backend config invalid, keeping the previous one"


def _good(emu: Emulator) -> dict[str, Any]:
    return ibm(emu, "fake-manila", "fake_manila")


def _with(emu: Emulator, **spec: Any) -> list[dict[str, Any]]:
    doc = _good(emu)
    doc["spec"] = {**doc["spec"], **spec}
    return [doc]


def bad_configs(emu: Emulator) -> list[tuple[str, str | list[dict[str, Any]], list[str]]]:
    """(case, file content or backends, substrings the error must contain)."""
    good = _good(emu)
    return [
        ("malformed YAML", "backends: [\n  - {name: x\n", ["(file)", "not valid YAML"]),
        ("not a mapping", "- a\n- b\n", ["(file)", "must be a mapping"]),
        ("unknown field", _with(emu, lanez=2), ["backends[0].spec.lanez", "unknown field"]),
        (
            "device ID over 63 chars",
            [{**good, "name": "q" * 60}],
            ["backends[0].name", "device IDs (<name>-lane-<n>) must stay within 63"],
        ),
        ("name not a DNS label", [{**good, "name": "IBM_Torino"}], ["backends[0].name", "DNS"]),
        ("unknown resource type", _with(emu, type="quantum-magic"), ["backends[0].spec.type"]),
        (
            "credential in config",
            _with(emu, config={**good["spec"]["config"], "QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY}),
            ["backends[0].spec.config", "credentialsSecretRef"],
        ),
        ("lanes not a number", _with(emu, lanes="two"), ["backends[0].spec.lanes"]),
        ("zero lanes", _with(emu, lanes=0), ["backends[0].spec.lanes"]),
        (
            "resource id with spaces",
            _with(emu, resourceId="fake manila"),
            ["backends[0].spec.resourceId", "not a QRMI resource id"],
        ),
        (
            "node-bound without selector",
            _with(emu, access="node-bound"),
            ["backends[0].spec.nodeSelector"],
        ),
        ("duplicate names", [good, good], ["backends", "appears twice"]),
        (
            "missing required config",
            _with(emu, config={}),
            ["spec.config", "QRMI_IBM_QCS_ENDPOINT"],
        ),
        ("oversized file", "#" * (MAX_CONFIG_BYTES + 1), ["(file)", "larger than"]),
    ]


def _write(layout: Layout, content: str | list[dict[str, Any]]) -> None:
    text = content if isinstance(content, str) else yaml.safe_dump({"backends": content})
    tmp = layout.config.with_name(".cfg.tmp")
    tmp.write_text(text)
    tmp.replace(layout.config)


def healthy_ids(ds: list[DeviceState]) -> list[str]:
    return sorted(d.id for d in ds if d.healthy)


def test_bad_backend_configs_name_the_field_and_keep_the_agent_serving(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    _write(layout, "backends: [oops\n")  # invalid from the start: it runs with nothing
    plugin = plugin_process()
    plugin.wait_log(INVALID)
    kubelet.wait_for_registration(timeout=20)
    assert plugin.metric("qpu_k8s_config_invalid") == 1
    _write(layout, [_good(emu)])
    kubelet.wait_for_devices(RESOURCE, lambda ds: healthy_ids(ds) == ["fake-manila-lane-0"], 20)
    assert plugin.metric("qpu_k8s_config_invalid") == 0
    pid = plugin.proc.pid if plugin.proc else 0

    cases = bad_configs(emu)
    for n, (case, content, needles) in enumerate(cases, start=2):
        _write(layout, content)
        line = plugin.wait_log(INVALID, count=n)
        for needle in needles:
            assert needle in line["error"], f"{case}: {needle!r} not in {line['error']!r}"
        assert plugin.metric("qpu_k8s_config_invalid") == 1, case
        # The previous good config is kept: the device stays advertised and usable.
        assert healthy_ids(kubelet.devices(RESOURCE)) == ["fake-manila-lane-0"], case
        _write(layout, [_good(emu)])  # fixed again before the next case
        wait_for(lambda: plugin.metric("qpu_k8s_config_invalid") == 0, 10, f"{case} fixed")
    envs = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs)
    assert envs["QRMI_JOB_QPU_RESOURCES"] == "fake_manila"
    assert plugin.proc is not None
    assert plugin.proc.poll() is None
    assert plugin.proc.pid == pid  # one process all along: no crash, no restart
    assert not any(s in plugin.text() for s in SECRETS)
    record_result("bad-config", cases=len(cases), crashes=0, secrets_exposed=0)


def test_missing_and_wrong_secrets_make_devices_unhealthy_with_the_reason(
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
) -> None:
    _write(
        layout,
        [
            ibm(emu, "no-secret", "fake_manila", secret_name="absent"),
            ibm(emu, "wrong-key", "fake_nairobi", secret_name="wrong-key"),
            ibm(emu, "bad-value", "fake_torino", secret_name="bad-value"),
        ],
    )
    write_secret(layout.credentials, "wrong-key", {"QRMI_IBM_QCS_APIKEY": IBM_KEY})
    write_secret(layout.credentials, "bad-value", {"QRMI_IBM_QCS_IAM_APIKEY": "not-the-key"})
    plugin = plugin_process()
    kubelet.wait_for_registration(timeout=20)
    kubelet.wait_for_devices(RESOURCE, lambda ds: len(ds) == 3 and not healthy_ids(ds), 20)
    expected = {
        "no-secret-lane-0": (
            grpc.StatusCode.FAILED_PRECONDITION,
            ["Secret 'absent' could not be read", "QRMI_IBM_QCS_IAM_APIKEY"],
        ),
        "wrong-key-lane-0": (
            grpc.StatusCode.FAILED_PRECONDITION,
            ["Secret 'wrong-key' has QRMI_IBM_QCS_APIKEY", "needs QRMI_IBM_QCS_IAM_APIKEY"],
        ),
        "bad-value-lane-0": (grpc.StatusCode.PERMISSION_DENIED, ["[auth]"]),
    }
    for device, (code, needles) in expected.items():
        with pytest.raises(grpc.RpcError) as info:
            kubelet.allocate(RESOURCE, [[device]], only_healthy=False)
        assert info.value.code() is code, device
        for needle in needles:
            assert needle in str(info.value.details()), (device, info.value.details())
        assert not any(s in str(info.value.details()) for s in (*SECRETS, "not-the-key"))
    # Device IDs the plugin never advertised (another resource's, or a removed backend's).
    for device, code, needle in (
        ("gpu-0", grpc.StatusCode.INVALID_ARGUMENT, "device 'gpu-0' is not a device of this"),
        ("gone-lane-0", grpc.StatusCode.FAILED_PRECONDITION, "backend 'gone' is not offered"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            kubelet.allocate(RESOURCE, [[device]], only_healthy=False)
        assert info.value.code() is code
        assert needle in str(info.value.details())
    assert open_tokens(emu) == set()
    # Fixing the Secrets (a Secret volume update) heals the devices without a restart.
    write_secret(layout.credentials, "absent", {"QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY})
    write_secret(layout.credentials, "wrong-key", {"QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY})
    write_secret(layout.credentials, "bad-value", {"QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY})
    start = time.monotonic()
    kubelet.wait_for_devices(RESOURCE, lambda ds: len(healthy_ids(ds)) == 3, 20)
    healed = round(time.monotonic() - start, 3)
    assert not any(s in plugin.text() for s in (*SECRETS, "not-the-key"))
    record_result("bad-secrets", cases=3, healed_s=healed, secrets_exposed=0)


def test_bad_claims_fail_prepare_naming_the_field_and_the_driver_keeps_serving(
    emu: Emulator, dra_node: DraNode, dra_kubelet: FakeDRAKubelet, dra_process: StartDra
) -> None:
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name, lanes=2)])
    driver = dra_process()
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)

    def params(**fields: Any) -> list[dict[str, Any]]:
        return [params_config(**fields)]

    lane = [("qpu", "ibm-manila-lane-0")]
    dra_node.claim_secret(NS, "wrong-keys", {"APIKEY": IBM_KEY})
    cases: list[tuple[str, tuple[str, str, str], list[str]]] = [
        (
            "unknown parameter",
            dra_node.claim(lane, config=params(qubitz=5)),
            ["devices.config[0].opaque.parameters.qubitz: unknown field", "allowed fields"],
        ),
        (
            "wrong parameter type",
            dra_node.claim(lane, config=params(sessionMaxTtlSeconds="1h")),
            ["parameters.sessionMaxTtlSeconds", "60 to 86400"],
        ),
        (
            "bad session mode",
            dra_node.claim(lane, config=params(sessionMode="forever")),
            ["parameters.sessionMode", "dedicated or batch"],
        ),
        (
            "unknown backend",
            dra_node.claim([("qpu", "ibm-nowhere-lane-0")]),
            ["backend 'ibm-nowhere' is not configured on this node"],
        ),
        (
            "not one of our device IDs",
            dra_node.claim([("qpu", "gpu-0")]),
            ["'gpu-0' is not a qpu-k8s device ID"],
        ),
        (
            "lane out of range",
            dra_node.claim([("qpu", "ibm-manila-lane-7")]),
            ["backend 'ibm-manila' has 2 lanes"],
        ),
        (
            "missing per-claim Secret",
            dra_node.claim(lane, config=params(credentialsSecretRef={"name": "alice"})),
            ["credentialsSecretRef", f"Secret {NS}/alice not found"],
        ),
        (
            "per-claim Secret without the key",
            dra_node.claim(lane, config=params(credentialsSecretRef={"name": "wrong-keys"})),
            ["credentialsSecretRef", "'wrong-keys' has APIKEY", "QRMI_IBM_QCS_IAM_APIKEY"],
        ),
        (
            "two lanes of one backend in one claim",
            dra_node.claim([("a", "ibm-manila-lane-0"), ("b", "ibm-manila-lane-1")]),
            ["are both QRMI resource 'fake_manila'"],
        ),
    ]
    for case, claim, needles in cases:
        ref = ClaimRef(*claim)
        result = dra_kubelet.node_prepare_resources([ref])[ref.uid]
        assert not result.devices, case
        for needle in needles:
            assert needle in result.error, f"{case}: {needle!r} not in {result.error!r}"
        assert not any(s in result.error for s in SECRETS), case
    assert open_tokens(emu) == set()  # nothing acquired for any of them
    assert dra_node.checkpoint()["claims"] == {}
    good = ClaimRef(*dra_node.claim(lane))
    assert dra_kubelet.node_prepare_resources([good])[good.uid].error == ""
    assert dra_kubelet.node_unprepare_resources([good]) == {good.uid: ""}
    assert driver.proc is not None
    assert driver.proc.poll() is None
    assert not any(s in driver.text() for s in SECRETS)
    record_result("bad-claims", cases=len(cases), crashes=0, secrets_exposed=0)


def test_garbage_checkpoints_are_moved_aside_and_both_agents_start(  # noqa: PLR0917
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
    dra_node: DraNode,
    dra_kubelet: FakeDRAKubelet,
    dra_process: StartDra,
) -> None:
    """A torn or overwritten checkpoint (here: bytes that are not even UTF-8) must not keep
    an agent from starting: that would be a crash loop taking the node's QPUs away."""
    garbage = b"\x80\xfe\x00 not json \xff"
    layout.state_dir.mkdir(parents=True)
    layout.checkpoint.write_bytes(garbage)
    dra_node.state_dir.mkdir(parents=True)
    (dra_node.state_dir / DRA_CHECKPOINT).write_bytes(garbage)
    _write(layout, [_good(emu)])
    dra_node.write_backends([ibm(emu, "ibm-manila", "fake_manila", node=dra_node.name)])
    plugin = plugin_process()
    driver = dra_process()
    plugin.wait_log("checkpoint unreadable; moved aside, starting empty")
    driver.wait_log("checkpoint unreadable; moved aside, starting empty")
    kubelet.wait_for_devices(RESOURCE, lambda ds: healthy_ids(ds) == ["fake-manila-lane-0"], 20)
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    assert [p.read_bytes() for p in layout.state_dir.glob(f"{DP_CHECKPOINT}.corrupt-*")] == [
        garbage
    ]
    assert len(list(dra_node.state_dir.glob(f"{DRA_CHECKPOINT}.corrupt-*"))) == 1
    envs = dict(kubelet.allocate(RESOURCE, [["fake-manila-lane-0"]]).container_responses[0].envs)
    assert envs["QRMI_JOB_QPU_RESOURCES"] == "fake_manila"
    ref = ClaimRef(*dra_node.claim([("qpu", "ibm-manila-lane-0")]))
    assert dra_kubelet.node_prepare_resources([ref])[ref.uid].error == ""
    record_result("garbage-checkpoints", agents_started=2, crashes=0)
