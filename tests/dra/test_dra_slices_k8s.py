"""SlicePublisher against the real 1.37 apiserver: its validation of ResourceSlices, field
and label selectors, watches. Each test has a pool of its own on node 127.0.0.1, deleted at
the end, under a driver name of its own: no DeviceClass selects these devices, so the
scheduler never hands them to another test's claim."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client

from qpu_k8s.fakekubelet.common import wait_on
from qpu_k8s.resourceslices.build import GROUP, PLURAL, Device, DeviceTaint, PoolScope
from qpu_k8s.resourceslices.publish import SlicePublisher
from testsupport.dra import validate

pytestmark = pytest.mark.cluster
DRIVER = "publisher-test.quantum.example.com"


def _devices(n: int, qubits: int = 5) -> list[Device]:
    return [Device(f"qpu-{i:03d}-lane-0", {"qubits": qubits, "vendor": "ibm"}) for i in range(n)]


def _pools(pub: SlicePublisher) -> list[dict[str, Any]]:
    return sorted((s["spec"]["pool"] for s in pub.list()), key=str)


def test_publish_is_a_reconcile_with_generation_bumps(
    k8s_api: client.ApiClient, pool_name: str
) -> None:
    pub = SlicePublisher(k8s_api, DRIVER, pool_name, PoolScope.node("127.0.0.1"))
    try:
        first = pub.publish(_devices(200))
        assert (first.changed, first.generation, first.created) == (True, 1, 2)
        assert _pools(pub) == [{"name": pool_name, "generation": 1, "resourceSliceCount": 2}] * 2
        for s in pub.list():
            validate(
                {"apiVersion": f"{GROUP}/v1", "kind": "ResourceSlice", "metadata": {}}
                | {k: v for k, v in s.items() if k not in ("metadata", "apiVersion", "kind")}
            )
        # Same content: nothing written, generation unchanged.
        assert pub.publish(_devices(200)).changed is False
        # Changed attribute: every slice rewritten at generation 2.
        second = pub.publish(_devices(200, qubits=7))
        assert (second.generation, second.updated) == (2, 2)
        # Shrink below 128: one slice left, the other deleted, count 1.
        third = pub.publish(_devices(3))
        assert (third.generation, third.updated, third.deleted) == (3, 1, 1)
        assert _pools(pub) == [{"name": pool_name, "generation": 3, "resourceSliceCount": 1}]
        # A taint is a change too.
        tainted = [
            Device(d.name, d.attributes, (DeviceTaint(f"{DRIVER}/unhealthy"),)) for d in _devices(3)
        ]
        assert pub.publish(tainted).generation == 4
        assert pub.publish(tainted).changed is False
    finally:
        pub.delete_all()
    assert pub.list() == []


def test_wiped_slices_come_back_and_a_new_publisher_never_goes_back(
    k8s_api: client.ApiClient, pool_name: str
) -> None:
    pub = SlicePublisher(k8s_api, DRIVER, pool_name, PoolScope.node("127.0.0.1"))
    custom = client.CustomObjectsApi(k8s_api)
    try:
        pub.publish(_devices(2))
        pub.publish(_devices(3))
        # The kubelet wipes the node's slices when it restarts.
        for s in pub.list():
            custom.delete_cluster_custom_object(GROUP, "v1", PLURAL, s["metadata"]["name"])
        assert pub.list() == []
        again = pub.publish()
        assert again.changed
        assert again.created == 1
        assert again.generation == 3
        # A restarted driver (new publisher) starts above the generation it finds.
        restarted = SlicePublisher(k8s_api, DRIVER, pool_name, PoolScope.node("127.0.0.1"))
        assert restarted.publish(_devices(3)).changed is False
        assert restarted.publish(_devices(4)).generation == 4
    finally:
        pub.delete_all()


def test_pools_are_kept_apart_by_label(k8s_api: client.ApiClient, pool_name: str) -> None:
    a = SlicePublisher(k8s_api, DRIVER, pool_name, PoolScope.node("127.0.0.1"))
    b = SlicePublisher(k8s_api, DRIVER, pool_name + "-shared", PoolScope.cluster())
    try:
        a.publish(_devices(2))
        b.publish(_devices(5))
        a.publish(_devices(1))
        assert [len(s["spec"]["devices"]) for s in b.list()] == [5]
        assert b.list()[0]["spec"]["allNodes"] is True
        assert b.publish().changed is False
    finally:
        a.delete_all()
        b.delete_all()


def test_watch_reports_a_wipe(k8s_api: client.ApiClient, pool_name: str) -> None:
    pub = SlicePublisher(k8s_api, DRIVER, pool_name, PoolScope.node("127.0.0.1"))
    events: list[str] = []
    cond = threading.Condition()
    stop = threading.Event()

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        with cond:
            events.append(kind)
            cond.notify_all()

    t = threading.Thread(target=pub.watch, args=(on_event, stop, 5), daemon=True)
    t.start()
    try:
        pub.publish(_devices(1))
        wait_on(cond, lambda: True if "ADDED" in events else None, 10, lambda: str(events))
        pub.delete_all()
        wait_on(cond, lambda: True if "DELETED" in events else None, 10, lambda: str(events))
    finally:
        stop.set()
        pub.stop_watch()
        t.join(10)
    assert not t.is_alive()
