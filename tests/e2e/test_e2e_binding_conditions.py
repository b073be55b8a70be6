"""What acquire-before-bind would rely on, observed on the real 1.37 scheduler (issue 13 item
1; the design is in ``qpu_k8s/dra/README.md``): devices published with ``bindingConditions``
and ``bindingFailureConditions`` are allocated but the pod is not bound until a controller
sets the condition True in the claim's ``status.devices``; the failure condition makes the
scheduler drop the allocation and pick another device.

No driver of ours is involved: a probe driver's slice on a Node object without a kubelet (so
nothing tries to prepare the claim), and the test plays the controller as the cluster admin.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster
PROBE_DRIVER = "bind-probe.quantum.example.com"
ACQUIRED = "qpu.quantum.example.com/acquired"
FAILED = "qpu.quantum.example.com/acquire-failed"


@pytest.fixture
def probe(local_cluster: LocalCluster) -> Iterator[str]:
    """A Node object (no kubelet: able to hold pods, tolerating its not-ready taints), a
    DeviceClass of the probe driver and its slice of two devices with binding conditions."""
    lc = local_cluster
    node = f"bind-probe-{uuid.uuid4().hex[:6]}"
    lc.apply([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}])
    lc.kubectl(
        "patch", "node", node, "--subresource=status", "--type=merge", "-p",
        '{"status":{"capacity":{"pods":"10","cpu":"1","memory":"1Gi"},'
        '"allocatable":{"pods":"10","cpu":"1","memory":"1Gi"}}}',
    )  # fmt: skip
    device = {
        "bindingConditions": [ACQUIRED],
        "bindingFailureConditions": [FAILED],
        "attributes": {"qpu": {"bool": True}},
    }
    lc.apply(
        [
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "DeviceClass",
                "metadata": {"name": node},
                "spec": {
                    "selectors": [{"cel": {"expression": f'device.driver == "{PROBE_DRIVER}"'}}]
                },
            },
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {"name": node},
                "spec": {
                    "driver": PROBE_DRIVER,
                    "nodeName": node,
                    "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                    "devices": [{"name": f"qpu-{i}", **device} for i in range(2)],
                },
            },
        ]
    )
    try:
        yield node
    finally:
        lc.kubectl("delete", "resourceslice", node, "--ignore-not-found")
        lc.kubectl("delete", "deviceclass", node, "--ignore-not-found")
        lc.kubectl("delete", "node", node, "--ignore-not-found")


def _claim(lc: LocalCluster, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = lc.kubectl_json("-n", ns, "get", "resourceclaim", "probe")
    return out


def _allocated(lc: LocalCluster, ns: str) -> dict[str, Any] | None:
    alloc = (_claim(lc, ns).get("status") or {}).get("allocation")
    if not alloc:
        return None
    (result,) = alloc["devices"]["results"]
    return dict(result)


def _bound_to(lc: LocalCluster, ns: str) -> str:
    got: str = lc.kubectl_json("-n", ns, "get", "pod", "probe")["spec"].get("nodeName", "")
    return got


def _set_condition(lc: LocalCluster, ns: str, node: str, device: str, ctype: str) -> None:
    """What the acquiring controller would write: the device's condition True."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {
        "status": {
            "devices": [
                {
                    "driver": PROBE_DRIVER,
                    "pool": node,
                    "device": device,
                    "conditions": [
                        {
                            "type": ctype,
                            "status": "True",
                            "reason": "Probe",
                            "message": "set by the test",
                            "lastTransitionTime": now,
                        }
                    ],
                }
            ]
        }
    }
    lc.kubectl(
        "-n", ns, "patch", "resourceclaim", "probe", "--subresource=status", "--type=merge",
        "-p", json.dumps(patch),
    )  # fmt: skip


def test_scheduler_waits_for_the_binding_condition_and_moves_on_a_failure(
    local_cluster: LocalCluster, release: rel.Release, ns: str, probe: str
) -> None:
    lc = local_cluster
    lc.apply(
        [
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": "probe"},
                "spec": {
                    "devices": {
                        "requests": [{"name": "qpu", "exactly": {"deviceClassName": probe}}]
                    }
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "probe"},
                "spec": {
                    "tolerations": [{"operator": "Exists"}],
                    "resourceClaims": [{"name": "qpu", "resourceClaimName": "probe"}],
                    "containers": [
                        {
                            "name": "c",
                            "image": rel.BUSYBOX_IMAGE,
                            "resources": {"claims": [{"name": "qpu"}]},
                        }
                    ],
                },
            },
        ],
        "-n",
        ns,
    )
    try:
        first = wait_until(lambda: _allocated(lc, ns), 60, "the claim allocated")
        # The allocation carries the device's conditions, and the pod waits unbound.
        assert first["bindingConditions"] == [ACQUIRED]
        assert first["bindingFailureConditions"] == [FAILED]
        assert _claim(lc, ns)["status"]["reservedFor"][0]["name"] == "probe"
        assert _bound_to(lc, ns) == ""

        # The failure condition: the scheduler drops the allocation and places the claim
        # again. As the driver would (the failed acquire reprobes the backend, and an
        # unhealthy one is withdrawn), the failed device leaves the slice first, so the new
        # allocation can only be the other QPU.
        (other,) = {"qpu-0", "qpu-1"} - {first["device"]}
        lc.kubectl(
            "patch", "resourceslice", probe, "--type=merge", "-p",
            json.dumps({"spec": {"pool": {"name": probe, "generation": 2, "resourceSliceCount": 1},
                                 "devices": [{"name": other, "bindingConditions": [ACQUIRED],
                                              "bindingFailureConditions": [FAILED]}]}}),
        )  # fmt: skip
        _set_condition(lc, ns, probe, first["device"], FAILED)
        second = wait_until(
            lambda: (r := _allocated(lc, ns)) and r["device"] == other and r,
            120,
            "the claim re-allocated to the other device",
        )
        assert _bound_to(lc, ns) == ""

        # The binding condition True: the pod is bound at once.
        _set_condition(lc, ns, probe, second["device"], ACQUIRED)
        start = time.monotonic()
        wait_until(lambda: _bound_to(lc, ns) == probe, 60, "the pod bound", every=0.05)
        print(f"bound {time.monotonic() - start:.2f}s after the condition was set")
    finally:
        lc.kubectl("-n", ns, "delete", "pod", "probe", "--grace-period=0", "--force", check=False)
