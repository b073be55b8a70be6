"""The acquisition state machine and its checkpoint, driven with explicit times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qpu_k8s.core import journal
from qpu_k8s.core.checkpoint import CheckpointFile
from qpu_k8s.deviceplugin import metrics
from qpu_k8s.deviceplugin.state import (
    JOURNAL_VERSION,
    LEGACY_CHECKPOINT,
    AcqState,
    Acquisition,
    ContainerRef,
    Intent,
    Ledger,
    LedgerData,
)
from qpu_k8s.node.releases import Backoff

POD_A = ContainerRef(namespace="ns", pod="a", container="main")
POD_B = ContainerRef(namespace="ns", pod="b", container="main")
T0 = 1_000_000.0


def ledger(tmp_path: Path, grace: float = 5.0) -> Ledger:
    led = Ledger(tmp_path / "acq.journal", release_grace=grace)
    led.load(T0)
    return led


def allocate(
    led: Ledger,
    devices: tuple[str, ...],
    now: float,
    backend: str = "qpu",
    token: str = "t0",  # noqa: S107
) -> str:
    (acq,) = led.begin([Intent(backend, backend.replace("-", "_"), devices, devices)], now)
    led.acquired(acq.id, token, now)
    return acq.id


def state(led: Ledger, acq_id: str) -> AcqState:
    acq = led.get(acq_id)
    assert acq is not None
    return acq.state


def test_checkpoint_round_trip_keeps_every_field(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    acq_id = allocate(led, ("qpu-lane-0",), T0, token="session-1")
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 1)
    again = ledger(tmp_path)
    assert again.snapshot() == led.snapshot()
    acq = again.get(acq_id)
    assert acq is not None
    assert acq.state is AcqState.BOUND
    assert acq.holder == POD_A
    assert acq.token == "session-1"


def test_acquire_in_flight_at_crash_becomes_lost(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    (acq,) = led.begin([Intent("qpu", "qpu", ("qpu-lane-0",), ("qpu-lane-0",))], T0)
    before = metrics.LOSSES.lost.labels("qpu")._value.get()
    again = ledger(tmp_path)  # the plugin died between the intent and the vendor's answer
    assert state(again, acq.id) is AcqState.LOST
    assert metrics.LOSSES.lost.labels("qpu")._value.get() == before + 1
    assert again.due_releases(T0 + 100) == []  # no token: nothing can be released


def test_bound_when_listed_released_only_after_grace(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=5.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    held = {frozenset({"qpu-lane-0"}): POD_A}
    led.reconcile({}, T0 + 1)  # not listed yet: the kubelet may not show it yet
    led.reconcile({}, T0 + 5.5)
    assert state(led, acq_id) is AcqState.ALLOCATED
    led.reconcile(held, T0 + 6)
    assert state(led, acq_id) is AcqState.BOUND
    led.reconcile({}, T0 + 7)  # the pod ended
    led.reconcile({}, T0 + 11.9)
    assert state(led, acq_id) is AcqState.BOUND
    led.reconcile({}, T0 + 12)
    assert state(led, acq_id) is AcqState.RELEASING
    assert [a.id for a in led.due_releases(T0 + 12)] == [acq_id]


def test_unlisted_allocation_released_after_grace(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=2.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({}, T0)
    led.reconcile({}, T0 + 2)
    acq = led.get(acq_id)
    assert acq is not None
    assert acq.state is AcqState.RELEASING
    assert "no container was listed" in acq.release_reason


def test_list_failure_restarts_the_clock(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=2.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({}, T0)
    led.interrupt(T0 + 1.5, why="List failed")
    led.reconcile({}, T0 + 2.5)
    led.reconcile({}, T0 + 4.4)
    assert state(led, acq_id) is AcqState.ALLOCATED
    led.reconcile({}, T0 + 4.5)
    assert state(led, acq_id) is AcqState.RELEASING


def test_kubelet_restart_holds_releases(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=1.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0)
    led.interrupt(T0 + 1, hold=30.0, why="kubelet restarted")
    led.reconcile({}, T0 + 2)  # a restarted kubelet lists no pods until it has synced
    led.reconcile({}, T0 + 30.9)
    assert state(led, acq_id) is AcqState.BOUND
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 32)
    assert state(led, acq_id) is AcqState.BOUND


def test_newer_allocate_of_same_devices_supersedes(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    old = allocate(led, ("qpu-lane-0",), T0, token="old")
    new = allocate(led, ("qpu-lane-0",), T0 + 1, token="new")
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 2)
    assert state(led, new) is AcqState.BOUND
    old_acq = led.get(old)
    assert old_acq is not None
    assert old_acq.state is AcqState.RELEASING
    assert "superseded" in old_acq.release_reason


def test_devices_held_by_another_pod_release_the_old_holder(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 1)
    led.reconcile({frozenset({"qpu-lane-0"}): POD_B}, T0 + 2)
    acq = led.get(acq_id)
    assert acq is not None
    assert acq.state is AcqState.RELEASING
    assert "ns/a/main is gone" in acq.release_reason


def test_one_acquisition_per_backend_bound_by_the_whole_request(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    request = ("a-lane-0", "a-lane-1", "b-lane-0")
    acqs = led.begin(
        [
            Intent("a", "a", ("a-lane-0", "a-lane-1"), request),
            Intent("b", "b", ("b-lane-0",), request),
        ],
        T0,
    )
    for acq in acqs:
        led.acquired(acq.id, f"tok-{acq.backend}", T0)
    led.reconcile({frozenset({"a-lane-0", "a-lane-1"}): POD_A}, T0 + 1)  # not the same set
    assert {state(led, a.id) for a in acqs} == {AcqState.ALLOCATED}
    led.reconcile({frozenset(request): POD_A}, T0 + 2)
    assert {state(led, a.id) for a in acqs} == {AcqState.BOUND}


def test_release_failures_back_off_then_succeed_once(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=0.0)
    led.backoff = Backoff(base=1.0, cap=4.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({}, T0)
    delays = [led.release_failed(acq_id, "[unavailable] 503", T0 + i) for i in range(4)]
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert led.due_releases(T0 + 3 + 3.9) == []
    assert [a.id for a in led.due_releases(T0 + 3 + 4)] == [acq_id]
    led.release_succeeded(acq_id, T0 + 8)
    assert state(led, acq_id) is AcqState.RELEASED
    assert led.due_releases(T0 + 100) == []
    again = ledger(tmp_path)
    assert state(again, acq_id) is AcqState.RELEASED  # a restart does not release it again
    assert again.due_releases(T0 + 100) == []


def test_tombstones_are_pruned(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "acq.journal", release_grace=0.0, tombstone_ttl=60.0, max_tombstones=3)
    led.load(T0)
    ids = []
    for i in range(5):
        acq_id = allocate(led, (f"qpu-lane-{i}",), T0 + i)
        led.reconcile({}, T0 + i)
        led.release_succeeded(acq_id, T0 + i)
        ids.append(acq_id)
    assert [a.id for a in led.snapshot()] == ids[2:]
    led.reconcile({}, T0 + 1000)
    assert led.snapshot() == []


def test_corrupt_checkpoint_is_moved_aside(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    allocate(led, ("qpu-lane-0",), T0)
    path = tmp_path / "acq.journal"
    text = path.read_text()
    path.write_text(text.replace('"token":"t0"', '"token":"tampered"', 1) + '{"ops":[]}\n')
    again = ledger(tmp_path)
    assert again.snapshot() == []
    assert list(tmp_path.glob("acq.journal.corrupt-*"))


# A session held by a pod, as a plugin of an earlier version recorded it.
HELD_BY_V1 = Acquisition(
    id="a1",
    backend="qpu",
    resource_id="qpu",
    devices=("qpu-lane-0",),
    request=("qpu-lane-0",),
    state=AcqState.BOUND,
    token="session-from-v1",
    created_at=T0,
    holder=POD_A,
)


def test_the_checkpoint_of_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    """An upgrade must not forget the tokens the node holds (their sessions would leak)."""
    held = HELD_BY_V1
    CheckpointFile(tmp_path / LEGACY_CHECKPOINT, LedgerData, 1).save(
        LedgerData(acquisitions=[held])
    )
    led = ledger(tmp_path)
    assert led.snapshot() == [held]
    assert not (tmp_path / LEGACY_CHECKPOINT).exists()
    assert ledger(tmp_path).snapshot() == [held]


def test_a_version_1_journal_keeps_its_tokens_and_is_rewritten_as_2(tmp_path: Path) -> None:
    """An upgrade from the plugin before the native encoding: its canonical file must be
    read, not quarantined (the tokens it holds would leak), and rewritten natively."""
    held = HELD_BY_V1
    path = tmp_path / "acq.journal"
    path.write_bytes(
        json.dumps({"journal": "acq", "version": 1}).encode()
        + b"\n"
        + journal._line([["a1", held.model_dump(mode="json")]])
    )
    assert ledger(tmp_path).snapshot() == [held]
    head, body = path.read_bytes().splitlines()
    assert json.loads(head)["version"] == JOURNAL_VERSION == 2
    assert body + b"\n" == journal._framed(journal._native_ops([("a1", held)]))
    assert not list(tmp_path.glob("acq.journal.corrupt-*"))
    assert ledger(tmp_path).snapshot() == [held]


def test_checkpoint_file_is_private(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    allocate(led, ("qpu-lane-0",), T0)
    assert (tmp_path / "acq.journal").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("failures", [1, 5, 20])
def test_backoff_is_capped(failures: int) -> None:
    assert 0 < Backoff(base=1.0, cap=300.0).delay(failures) <= 300.0


def test_an_ended_container_releases_at_once_without_grace_or_hold(tmp_path: Path) -> None:
    """The apiserver says the holder cannot run again: no grace, not even during a hold."""
    led = ledger(tmp_path, grace=60.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 1)
    assert state(led, acq_id) is AcqState.BOUND
    led.interrupt(T0 + 2, hold=30.0, why="kubelet restarted")
    # Still listed (its pod runs other containers), but this container is over.
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 3, finished=lambda c: c == POD_A)
    assert state(led, acq_id) is AcqState.RELEASING


def test_a_restarting_container_keeps_its_session(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=0.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 1, finished=lambda c: False)
    led.reconcile({frozenset({"qpu-lane-0"}): POD_A}, T0 + 100, finished=lambda c: False)
    assert state(led, acq_id) is AcqState.BOUND


def test_the_hold_ends_when_the_kubelet_has_caught_up(tmp_path: Path) -> None:
    led = ledger(tmp_path, grace=1.0)
    acq_id = allocate(led, ("qpu-lane-0",), T0)
    led.interrupt(T0, hold=30.0, why="plugin started")
    led.reconcile({}, T0 + 2)
    led.reconcile({}, T0 + 4)
    assert state(led, acq_id) is AcqState.ALLOCATED  # on hold
    led.end_hold("caught up")
    led.reconcile({}, T0 + 5)
    led.reconcile({}, T0 + 6.5)
    assert state(led, acq_id) is AcqState.RELEASING  # after the grace, not the hold
