"""A QuantumBackend's arrival and deletion reach the node agents within seconds.

The agents follow the operator's ConfigMap through the apiserver (``ConfigFeed``), not only
through their mounted volume, which the kubelet refreshes about once a minute: before,
a deleted backend stayed offered for that long, and a claim allocated one of its devices
could not be prepared. Real cluster: the operator, both agents, the scheduler's view of
the node's ResourceSlice and the node's allocatable count.
"""

from __future__ import annotations

import time

import pytest

from testsupport import release as rel
from testsupport.cluster import NODE, LocalCluster, wait_until

pytestmark = pytest.mark.cluster

NAME = "cfg-lagos"
# The volume took up to a minute or two; through the apiserver it is a matter of seconds
# (the operator's write, the watch event, one slice write).
WITHIN = 20.0


def _ours(release: rel.Release) -> list[str]:
    return [d for d in release.devices() if d == NAME or d.startswith(f"{NAME}-lane-")]


def test_a_node_bound_backend_is_offered_and_withdrawn_within_seconds(
    local_cluster: LocalCluster, release: rel.Release
) -> None:
    before = release.allocatable()
    doc = rel.backend_doc(release, NAME, "fake_lagos", node_bound=True, probe_seconds=600)
    start = time.monotonic()
    local_cluster.apply([doc])
    try:
        wait_until(
            lambda: f"{NAME}-lane-0" in release.devices(node=NODE),
            WITHIN,
            f"{NAME}'s lane in the node's ResourceSlice",
            every=0.2,
        )
        offered = time.monotonic() - start
        # The kubelet reports a device plugin's change with the node's next status update.
        wait_until(
            lambda: release.allocatable() == before + 1,
            WITHIN + 20,
            "the device plugin's new lane in the node's allocatable count",
            every=0.5,
        )
        start = time.monotonic()
        local_cluster.kubectl("delete", "quantumbackend", NAME, "--wait=false")
        wait_until(
            lambda: not _ours(release),
            WITHIN,
            f"{NAME}'s devices gone from every ResourceSlice",
            every=0.2,
        )
        withdrawn = time.monotonic() - start
        wait_until(
            lambda: release.allocatable() == before,
            WITHIN + 20,
            "the device plugin's lane gone from the node's allocatable count",
            every=0.5,
        )
        print(f"offered after {offered:.1f} s, withdrawn after {withdrawn:.1f} s")
    finally:
        local_cluster.kubectl(
            "delete", "quantumbackend", NAME, "--ignore-not-found", "--timeout=120s", check=False
        )
