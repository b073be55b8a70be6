"""Fault 8: no credential value leaves the two places it must reach the pod.

One run drives both node agents as real processes (debug logging) through their
credential-handling paths, successes and failures alike: Allocate and NodePrepareResources,
per-claim user credentials, rejected credentials on acquire and on health probes,
releases, restarts. Then every output is scanned for the credential values used:

* allowed, under the documented names only: the device-plugin Allocate response envs and
  the DRA CDI spec env, as ``{resource id}_{KEY}`` (and Pasqal's unprefixed
  ``PASQAL_USERNAME``/``PASSWORD``, which qrmi reads from the plain env);
* forbidden everywhere else: every log line of both processes, their /metrics text, their
  checkpoints and state dirs, the kubelet-facing error messages, the DRA health stream,
  and the ResourceSlices the DRA driver would publish for these backends.

The node agents write no other API object (claim status, events and ConfigMaps are the
operator's; its scan is in the operator's fault tests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest

from qpu_k8s.core.model import device_id, parse_backend
from qpu_k8s.core.names import DRIVER_NAME
from qpu_k8s.core.qrmi_client import QrmiClient
from qpu_k8s.core.vendors import profile
from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.emulator import Emulator
from qpu_k8s.fakekubelet import (
    ClaimRef,
    FakeDevicePluginKubelet,
    FakeDRAKubelet,
    FakePodResourcesServer,
    PodAllocation,
)
from qpu_k8s.resourceslices.attributes import device_attributes
from qpu_k8s.resourceslices.build import Device, PoolScope, build_slices
from testsupport.deviceplugin import Layout, StartPlugin
from testsupport.dra import NS, DraNode, StartDra, params_config
from testsupport.emulator import IBM_KEY, PASQAL_TOKEN, SECRETS, USER_KEY, open_tokens
from testsupport.faults import ibm, pasqal, record_result
from testsupport.names import DRIVER, RESOURCE
from testsupport.waiting import wait_for

PASQAL_PLAIN = {"PASQAL_USERNAME", "PASQAL_PASSWORD"}


def allowed_name(name: str, resource_ids: set[str]) -> bool:
    """``{resource id}_{secret key of its type}``, or Pasqal's unprefixed pair."""
    if name in PASQAL_PLAIN:
        return True
    secret_keys = {k for t in ("ibm-quantum-compute-service", "pasqal-cloud") for k in _keys(t)}
    return any(name == f"{rid}_{key}" for rid in resource_ids for key in secret_keys)


def _keys(rtype: str) -> frozenset[str]:
    from qpu_k8s.core.vendors import ResourceType

    return profile(ResourceType(rtype)).secret_keys


def carriers(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` whose value holds one of this suite's credentials."""
    return {k: v for k, v in env.items() if any(s in v for s in SECRETS)}


def scan(places: Mapping[str, str]) -> list[str]:
    """Where a credential value was found: ``["<place>: <which>"]``."""
    hits = []
    for where, text in places.items():
        for secret in SECRETS:
            if secret in text:
                hits.append(f"{where}: {secret[:18]}...")
    return hits


def files(root: Path, label: str) -> dict[str, str]:
    return {
        f"{label} {p.relative_to(root)}": p.read_text(errors="replace")
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".sock")
    }


def test_credentials_only_reach_allocate_envs_and_cdi_specs(  # noqa: PLR0917
    emu: Emulator,
    layout: Layout,
    kubelet: FakeDevicePluginKubelet,
    pod_resources: FakePodResourcesServer,
    plugin_process: StartPlugin,
    dra_node: DraNode,
    dra_kubelet: FakeDRAKubelet,
    dra_process: StartDra,
) -> None:
    places: dict[str, str] = {}
    layout.write_config(
        [
            ibm(emu, "fake-manila", "fake_manila"),
            ibm(emu, "fake-nairobi", "fake_nairobi"),
            pasqal(emu, "fresnel", "FRESNEL"),
        ]
    )
    dra_node.write_backends(
        [
            ibm(emu, "ibm-torino", "fake_torino", node=dra_node.name, lanes=2),
            ibm(emu, "ibm-lagos", "fake_lagos", node=dra_node.name),
            pasqal(emu, "emu-free", "EMU_FREE", node=dra_node.name),
        ]
    )
    plugin = plugin_process()  # --log-level debug
    driver = dra_process()
    kubelet.wait_for_devices(RESOURCE, lambda ds: len(ds) == 3 and all(d.healthy for d in ds), 20)
    dra_kubelet.wait_for_registration(DRIVER, timeout=20)
    health = dra_kubelet.watch_health("v1")

    # -- device plugin: success, failure, release ------------------------------------------
    resp = kubelet.allocate(RESOURCE, [["fake-manila-lane-0", "fresnel-lane-0"]])
    dp_env = dict(resp.container_responses[0].envs)
    pod_resources.set_pods(
        [PodAllocation.with_devices("job", NS, RESOURCE, ["fake-manila-lane-0", "fresnel-lane-0"])]
    )
    wait_for(lambda: {a.state for a in layout.acquisitions()} == {AcqState.BOUND}, 10, "bound")
    emu.set_fault("reject-auth", "fake_nairobi")
    with pytest.raises(grpc.RpcError) as denied:
        kubelet.allocate(RESOURCE, [["fake-nairobi-lane-0"]])
    places["Allocate error"] = str(denied.value.details())
    kubelet.wait_for_devices(RESOURCE, lambda ds: any(not d.healthy for d in ds), 10)

    # -- DRA: backend credentials, a user's own credentials, failure, release --------------
    dra_node.claim_secret(NS, "alice-ibm", {"QRMI_IBM_QCS_IAM_APIKEY": USER_KEY})
    user_params = [params_config(sessionMode="batch", credentialsSecretRef={"name": "alice-ibm"})]
    shared = ClaimRef(*dra_node.claim([("qpu", "ibm-torino-lane-0"), ("atoms", "emu-free-lane-0")]))
    alice = ClaimRef(*dra_node.claim([("qpu", "ibm-torino-lane-1")], config=user_params))
    rejected = ClaimRef(*dra_node.claim([("qpu", "ibm-lagos-lane-0")]))
    out = dra_kubelet.node_prepare_resources([shared, alice])
    assert {uid: r.error for uid, r in out.items()} == {shared.uid: "", alice.uid: ""}
    cdi_env = {ref.uid: dra_node.cdi_env(ref.uid) for ref in (shared, alice)}
    emu.set_fault("reject-auth", "fake_lagos")
    places["NodePrepareResources error"] = dra_kubelet.node_prepare_resources([rejected])[
        rejected.uid
    ].error
    assert places["NodePrepareResources error"]
    places["DRA health stream"] = json.dumps(
        [vars(h) for h in health.wait_for(lambda d: len(d) == 4, 10).values()]
    )
    emu.clear_faults()

    # The state while claims and pods hold their QPUs, then the releases.
    places |= files(layout.state_dir, "device-plugin state")
    places |= files(dra_node.state_dir, "DRA state")
    pod_resources.set_pods([])
    assert dra_kubelet.node_unprepare_resources([shared, alice]) == {shared.uid: "", alice.uid: ""}
    assert emu.state.wait_until(lambda s: not s.open_sessions(), 10), open_tokens(emu)
    places["device-plugin /metrics"] = plugin.metrics()
    places["DRA /metrics"] = driver.metrics()
    places |= files(layout.state_dir, "device-plugin state (after)")
    places |= files(dra_node.state_dir, "DRA state (after)")

    # -- the slices the DRA driver publishes for these backends (from the real vendor data)
    devices = []
    for name, rid, key in (("ibm-torino", "fake_torino", "QRMI_IBM_QCS_IAM_APIKEY"),):
        backend = parse_backend(ibm(emu, name, rid, node=dra_node.name))
        client = QrmiClient(backend, {key: IBM_KEY})
        attrs = device_attributes(backend, 0, client.target())
        devices.append(Device(device_id(name, 0), attrs))
    slices = build_slices(DRIVER_NAME, dra_node.name, PoolScope.node(dra_node.name), devices, 1)
    places["ResourceSlices"] = json.dumps(slices)

    # -- every log line of both processes (stopped cleanly, so everything is flushed) -------
    assert plugin.terminate() == 0
    assert driver.signal(15) == 0
    places["device-plugin log"] = plugin.text()
    places["DRA log"] = driver.text()
    logged = {r.get("msg") for r in plugin.records()} | {r.get("msg") for r in driver.records()}
    assert {"allocated", "allocate failed", "released", "claim prepared", "prepare failed"} <= (
        logged
    ), "the credential-handling paths did not all run"

    # Forbidden everywhere else...
    hits = scan(places)
    assert hits == [], f"credential values found in: {hits}"
    # ...and present only where the pod needs them, under the documented names.
    dp_ids = set(dp_env["QRMI_JOB_QPU_RESOURCES"].split(","))
    assert carriers(dp_env).keys() == {
        "fake_manila_QRMI_IBM_QCS_IAM_APIKEY",
        "FRESNEL_QRMI_PASQAL_CLOUD_AUTH_TOKEN",
    }
    assert all(allowed_name(k, dp_ids) for k in carriers(dp_env))
    assert carriers(cdi_env[shared.uid]) == {
        "fake_torino_QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY,
        "EMU_FREE_QRMI_PASQAL_CLOUD_AUTH_TOKEN": PASQAL_TOKEN,
    }
    assert carriers(cdi_env[alice.uid]) == {"fake_torino_QRMI_IBM_QCS_IAM_APIKEY": USER_KEY}
    for env in (dp_env, *cdi_env.values()):
        names = [k for k in env if not re.fullmatch(r"[A-Za-z0-9_]+", k)]
        assert names == [], names
    record_result(
        "secrets-scan",
        places_scanned=len(places),
        bytes_scanned=sum(len(t) for t in places.values()),
        secrets_exposed=len(hits),
    )
