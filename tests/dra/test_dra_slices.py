"""ResourceSlice building: chunks of 128, pool bookkeeping, scopes, v1 and v1beta1 schemas."""

from __future__ import annotations

import pytest

from qpu_k8s.resourceslices.attributes import device_attributes
from qpu_k8s.resourceslices.build import (
    LABEL_POOL,
    Device,
    DeviceTaint,
    PoolScope,
    build_slices,
    from_v1beta1,
    pool_label,
    slice_name,
    to_v1beta1,
)
from testsupport.dra import ibm_model, ibm_target, validate
from testsupport.names import DRIVER


def _devices(n: int) -> list[Device]:
    return [Device(f"qpu-{i:03d}-lane-0", {"qubits": i + 1, "simulator": False}) for i in range(n)]


def test_chunks_of_128_with_count_and_generation() -> None:
    slices = build_slices(DRIVER, "node-a", PoolScope.node("node-a"), _devices(300), 7)
    assert [len(s["spec"]["devices"]) for s in slices] == [128, 128, 44]
    for s in slices:
        assert s["spec"]["pool"] == {"name": "node-a", "generation": 7, "resourceSliceCount": 3}
        assert s["spec"]["nodeName"] == "node-a"
        assert s["metadata"]["labels"][LABEL_POOL] == pool_label(DRIVER, "node-a")
        validate(s)
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert names == sorted(names)
    assert len(set(names)) == 300
    assert build_slices(DRIVER, "node-a", PoolScope.node("node-a"), [], 1) == []


def test_real_backend_slice_validates_against_v1_and_v1beta1() -> None:
    backend = ibm_model(lanes=3)
    target = ibm_target("torino")
    devices = [
        Device(
            dev_id,
            device_attributes(backend, lane, target),
            (DeviceTaint(f"{DRIVER}/unhealthy", "offline"),) if lane == 2 else (),
        )
        for lane, dev_id in enumerate(backend.device_ids())
    ]
    (v1,) = build_slices(DRIVER, "127.0.0.1", PoolScope.node("127.0.0.1"), devices, 1)
    validate(v1, "1.34.0")
    assert v1["spec"]["devices"][0]["attributes"]["qubits"] == {"int": 133}
    assert v1["spec"]["devices"][2]["taints"] == [
        {"key": f"{DRIVER}/unhealthy", "value": "offline", "effect": "NoSchedule"}
    ]
    beta = to_v1beta1(v1)
    assert beta["apiVersion"] == "resource.k8s.io/v1beta1"
    assert beta["spec"]["devices"][0]["basic"]["attributes"]["lane"] == {"int": 0}
    validate(beta, "1.33.0")
    assert from_v1beta1(beta) == v1
    # 1.32's v1beta1 BasicDevice has no taints (DeviceTaints came in 1.33, feature-gated):
    # only untainted slices are valid there, which is why withdrawing is the default.
    with pytest.raises(Exception, match="'taints' was unexpected"):
        validate(beta, "1.32.0")
    untainted = [Device(d.name, d.attributes) for d in devices]
    (v1_plain,) = build_slices(DRIVER, "127.0.0.1", PoolScope.node("127.0.0.1"), untainted, 1)
    validate(to_v1beta1(v1_plain), "1.32.0")


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        (PoolScope.cluster(), {"allNodes": True}),
        (
            PoolScope.selector({"qpu.example/site": "lab"}),
            {
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "qpu.example/site", "operator": "In", "values": ["lab"]}
                            ]
                        }
                    ]
                }
            },
        ),
    ],
)
def test_cluster_wide_scopes(scope: PoolScope, field: dict[str, object]) -> None:
    (s,) = build_slices(DRIVER, "shared-ibm", scope, _devices(1), 1)
    assert {k: v for k, v in s["spec"].items() if k in field} == field
    assert "nodeName" not in s["spec"]
    validate(s)


def test_scope_needs_exactly_one_choice() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PoolScope(node_name="a", all_nodes=True)
    with pytest.raises(ValueError, match="exactly one"):
        PoolScope()


def test_names_are_stable_dns_subdomains_and_duplicates_refused() -> None:
    assert slice_name(DRIVER, "Pool/With_Odd", 0) == slice_name(DRIVER, "Pool/With_Odd", 0)
    assert slice_name(DRIVER, "a", 0) != slice_name("other.driver", "a", 0)
    name = slice_name(DRIVER, "Pool/With_Odd", 2)
    assert name.endswith("-2")
    assert name == name.lower()
    assert "/" not in name
    dup = [Device("x", {}), Device("x", {})]
    with pytest.raises(ValueError, match="appear twice"):
        build_slices(DRIVER, "p", PoolScope.node("n"), dup, 1)


def test_taint_effect_is_checked() -> None:
    with pytest.raises(ValueError, match="taint effect"):
        DeviceTaint("k", effect="Sometimes")
