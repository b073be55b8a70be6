"""The AdmissionCheck's decisions (the Kueue objects in their v1beta2 shape; the real Kueue and
operator prove the wiring in tests/e2e/test_e2e_kueue.py)."""

from __future__ import annotations

from typing import Any

from qpu_k8s.operator.admissioncheck import (
    BACKENDS_ANNOTATION,
    CONTROLLER_NAME,
    PENDING,
    READY,
    AdmissionGate,
    Readiness,
    decide,
    flavor_backends,
)

QPU = "quantum.example.com/qpu"


def workload(
    name: str = "job-a1",
    flavor: str | None = "torino",
    state: str = PENDING,
    reserved: bool = True,
    message: str = "",
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "admissionChecks": [
            {"name": "qpu-online", "state": state, "message": message, "lastTransitionTime": "t0"},
            {"name": "someone-else", "state": PENDING, "message": "", "lastTransitionTime": "t0"},
        ]
    }
    if reserved:
        flavors = {QPU: flavor} if flavor else {"cpu": "default"}
        status["admission"] = {
            "clusterQueue": "team-a",
            "podSetAssignments": [{"name": "main", "flavors": flavors}],
        }
    return {"metadata": {"name": name, "namespace": "team-a"}, "status": status}


def check(name: str = "qpu-online", controller: str = CONTROLLER_NAME) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 1}, "spec": {"controllerName": controller}}


def flavor(name: str, backends: str | None) -> dict[str, Any]:
    annotations = {BACKENDS_ANNOTATION: backends} if backends is not None else {}
    return {"metadata": {"name": name, "annotations": annotations}}


class Backends:
    def __init__(self, **ready: bool) -> None:
        self.ready = ready

    def __call__(self, name: str) -> tuple[bool, str] | None:
        if name not in self.ready:
            return None
        return (True, "") if self.ready[name] else (False, "BackendPaused: calibration")


def gate(readiness: Readiness) -> AdmissionGate:
    g = AdmissionGate(readiness)
    g.check_event(check(), None)
    g.flavor_event(flavor("torino", "e2e-torino, spare-torino"), None)
    return g


def test_flavor_annotation_is_a_sorted_set_of_names() -> None:
    assert flavor_backends(flavor("f", " b, a,,b ")) == ("a", "b")
    assert flavor_backends(flavor("f", None)) == ()


def test_one_ready_backend_of_the_flavor_admits() -> None:
    v = decide({"torino"}, {"torino": ("a", "b")}, Backends(a=False, b=True))
    assert v.state == READY
    assert "b (flavor torino)" in v.message


def test_no_ready_backend_waits_and_says_why_for_each() -> None:
    v = decide({"torino"}, {"torino": ("a", "gone")}, Backends(a=False))
    assert v.state == PENDING
    assert "QuantumBackend a is not Ready (BackendPaused: calibration)" in v.message
    assert "QuantumBackend gone does not exist" in v.message


def test_a_flavor_naming_no_backend_never_admits_and_names_the_fix() -> None:
    v = decide({"plain"}, {}, Backends(a=True))
    assert v.state == PENDING
    assert f"annotate it with {BACKENDS_ANNOTATION}=" in v.message


def test_a_workload_without_a_qpu_request_passes() -> None:
    assert decide(set(), {}, Backends()).state == READY


def test_pending_write_touches_only_our_check_and_is_not_repeated() -> None:
    g = gate(Backends(**{"e2e-torino": False, "spare-torino": False}))
    (w,) = g.workload_event(workload(), None)
    assert w.kind == "workload"
    assert (w.namespace, w.name) == ("team-a", "job-a1")
    (entry,) = w.body["status"]["admissionChecks"]
    assert entry["name"] == "qpu-online"
    assert entry["state"] == PENDING
    assert entry["lastTransitionTime"] == "t0", "a message change is not a transition"
    # The Workload comes back with our message: nothing more to write.
    assert g.workload_event(workload(message=entry["message"]), None) == []


def test_a_backend_coming_online_admits_the_waiting_workload() -> None:
    backends = Backends(**{"e2e-torino": False, "spare-torino": False})
    g = gate(backends)
    g.workload_event(workload(), None)
    assert g.reevaluate() == [], "nothing changed: nothing written again"
    backends.ready["e2e-torino"] = True
    (w,) = g.reevaluate()
    (entry,) = w.body["status"]["admissionChecks"]
    assert entry["state"] == READY
    assert entry["lastTransitionTime"] != "t0"
    assert g.waiting == {}, "an admitted Workload is not decided again"


def test_unreserved_decided_or_foreign_workloads_are_left_alone() -> None:
    g = gate(Backends(**{"e2e-torino": True}))
    assert g.workload_event(workload(reserved=False), None) == []
    assert g.workload_event(workload(state=READY), None) == []
    other = AdmissionGate(Backends(**{"e2e-torino": True}))
    other.check_event(check(controller="example.com/other"), None)
    assert other.workload_event(workload(), None) == []


def test_deleted_workload_is_forgotten() -> None:
    g = gate(Backends(**{"e2e-torino": False}))
    g.workload_event(workload(), None)
    assert g.waiting
    g.workload_event(workload(), "DELETED")
    assert g.waiting == {}


def test_our_check_is_marked_active_once() -> None:
    g = AdmissionGate(Backends())
    (w,) = g.check_event(check(), None)
    assert w.kind == "admissioncheck"
    assert w.name == "qpu-online"
    (cond,) = w.body["status"]["conditions"]
    assert (cond["type"], cond["status"], cond["observedGeneration"]) == ("Active", "True", 1)
    active = {**check(), "status": {"conditions": [cond]}}
    assert g.check_event(active, None) == []
