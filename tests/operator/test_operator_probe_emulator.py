"""Component tier: the controller probing the local emulator through the real ``qrmi`` client.

Real QRMI client, real HTTP on 127.0.0.1, the emulator's fault switches (hang, slow, 5xx,
offline, rejected credentials); the apiserver is the in-memory fake (the API tier uses the
real one). Also scans status, Events, the node ConfigMap and the captured logs for the
credential values used.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import yaml

from qpu_k8s.core import logs
from qpu_k8s.emulator.server import Emulator
from qpu_k8s.operator.controller import Controller, OperatorConfig
from testsupport.operator import FakeKube, cr, ready_condition
from testsupport.waiting import until

NS = "qpu-system"
WRONG_KEY = "wrong-apikey-4a1b2c3d"


def ibm(emu: Emulator, backend: str, ref: str = "emu-creds", **extra: Any) -> dict[str, Any]:
    return {
        "resourceId": backend,
        "type": "ibm-quantum-compute-service",
        "config": emu.ibm_config(backend),
        "credentialsSecretRef": {"name": ref},
        **extra,
    }


def pasqal(emu: Emulator, device: str) -> dict[str, Any]:
    return {
        "resourceId": device,
        "type": "pasqal-cloud",
        "config": emu.pasqal_config(device),
        "credentialsSecretRef": {"name": "emu-creds"},
    }


def test_emulated_backends_probe_to_the_right_conditions(emu: Emulator) -> None:
    kube = FakeKube()
    creds = {**emu.ibm_credentials(), **emu.pasqal_credentials()}
    kube.add_secret(NS, "emu-creds", creds)
    kube.add_secret(NS, "bad-creds", {"QRMI_IBM_QCS_IAM_APIKEY": WRONG_KEY})
    bodies = {
        "manila": kube.add_backend(cr("manila", ibm(emu, "fake_manila"))),
        "fresnel": kube.add_backend(cr("fresnel", pasqal(emu, "FRESNEL"))),
        "hanging": kube.add_backend(cr("hanging", ibm(emu, "fake_nairobi"))),
        "offline": kube.add_backend(cr("offline", ibm(emu, "fake_lagos"))),
        "failing": kube.add_backend(cr("failing", ibm(emu, "fake_torino"))),
        "badcreds": kube.add_backend(cr("badcreds", ibm(emu, "fake_manila", "bad-creds"))),
    }
    emu.set_fault("hang", "fake_nairobi")
    emu.set_online("fake_lagos", False, reason="maintenance until 14:00 UTC")
    emu.set_fault("error5xx", "fake_torino", status=503)
    captured = io.StringIO()
    logs.setup("debug", "json", captured)

    async def scenario() -> None:
        cfg = OperatorConfig(namespace=NS, debounce=0.01, probe_timeout=1.5)
        ctl = Controller(cfg, kube)  # type: ignore[arg-type]
        await ctl.start()
        try:
            for body in bodies.values():
                ctl.observe(body)

            def reasons() -> dict[str, str]:
                return {
                    n: ready_condition(o.get("status")).get("reason", "")
                    for n, o in kube.backends.items()
                }

            await until(lambda: "" not in reasons().values(), within=20, what="all probed")
        finally:
            await ctl.stop()

    try:
        asyncio.run(scenario())
    finally:
        emu.clear_faults()
        logging.getLogger().handlers.clear()

    def cond(name: str, ctype: str = "Ready") -> tuple[str, str, str]:
        c = ready_condition(kube.backends[name]["status"], ctype)
        return c["status"], c["reason"], c["message"]

    assert cond("manila")[:2] == ("True", "Online")
    assert kube.backends["manila"]["status"]["qubits"] == 5
    assert kube.backends["manila"]["status"]["attributes"]["t1Us"] > 0
    assert cond("fresnel")[:2] == ("True", "Online")
    assert kube.backends["fresnel"]["status"]["qubits"] == 80
    assert kube.backends["fresnel"]["status"]["technology"] == "neutral-atom"
    assert cond("hanging")[:2] == ("False", "ProbeTimeout")
    assert cond("offline")[:2] == ("False", "BackendOffline")
    assert "maintenance until 14:00 UTC" in cond("offline")[2]
    assert cond("offline", "Accessible")[0] == "True"
    assert cond("failing")[:2] == ("False", "VendorUnreachable")
    assert cond("badcreds")[:2] == ("False", "AuthenticationFailed")
    assert "'bad-creds'" in cond("badcreds")[2]

    values = [*creds.values(), WRONG_KEY]
    dump = yaml.safe_dump([kube.backends, kube.events, kube.config_maps]) + captured.getvalue()
    for v in values:
        assert v not in dump, "a credential value leaked into status/events/ConfigMap/logs"
    assert '"backend": "manila"' in captured.getvalue()


def test_slow_vendor_within_the_deadline_is_ready_and_latency_is_reported(emu: Emulator) -> None:
    kube = FakeKube()
    kube.add_secret(NS, "emu-creds", emu.ibm_credentials())
    body = kube.add_backend(cr("slow", ibm(emu, "fake_manila")))
    emu.set_fault("slow", "fake_manila", seconds=0.3)

    async def scenario() -> None:
        ctl = Controller(OperatorConfig(namespace=NS, debounce=0.01, probe_timeout=3), kube)  # type: ignore[arg-type]
        await ctl.start()
        try:
            ctl.observe(body)
            await until(lambda: "status" in kube.backends["slow"], within=15)
        finally:
            await ctl.stop()

    try:
        asyncio.run(scenario())
    finally:
        emu.clear_faults()
    status = kube.backends["slow"]["status"]
    assert ready_condition(status)["status"] == "True"
    assert status["probeLatencyMs"] >= 300
