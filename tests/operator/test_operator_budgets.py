"""Budget periods and tallies (the apiserver's enforcement and the operator's wiring are proven
in tests/e2e/test_e2e_budget.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest

from qpu_k8s.core.budget import BudgetSpec, Period, UnknownUsage, current_period
from qpu_k8s.operator import budget_crd, crd, usage_crd
from qpu_k8s.operator.budgets import BudgetKeeper, evaluate, qpu_seconds_of
from testsupport import packaging

NOW = datetime(2026, 12, 5, 20, 30, 15, tzinfo=UTC)  # a Saturday


def record(
    released: str, wall: float, quantum: float | None = None, ns: str = "team-a"
) -> dict[str, Any]:
    vendor: dict[str, Any] = {"state": "NotReported", "reason": "no figures"}
    if quantum is not None:
        vendor = {"state": "Reported", "quantumSeconds": quantum, "jobCount": 1}
    return {
        "spec": {"namespace": ns, "releasedAt": released, "wallSeconds": wall, "vendor": vendor}
    }


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        (Period.HOUR, "2026-12-05T20:00:00", "2026-12-05T21:00:00"),
        (Period.DAY, "2026-12-05T00:00:00", "2026-12-06T00:00:00"),
        (Period.WEEK, "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        (Period.MONTH, "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_calendar_periods_in_utc(period: Period, start: str, end: str) -> None:
    got = current_period(BudgetSpec(sessions=1, period=period), NOW)
    assert got == (datetime.fromisoformat(start + "+00:00"), datetime.fromisoformat(end + "+00:00"))


def test_a_period_in_seconds_counts_from_its_start() -> None:
    spec = BudgetSpec(sessions=1, period_seconds=60, period_start="2026-12-05T20:00:00Z")
    start, end = current_period(spec, NOW)
    assert start == datetime(2026, 12, 5, 20, 30, tzinfo=UTC)
    assert end - start == timedelta(seconds=60)


def test_vendor_seconds_count_where_reported_else_wall_time() -> None:
    assert qpu_seconds_of(record("2026-12-05T20:00:00Z", wall=30.0, quantum=2.5)) == 2.5
    assert qpu_seconds_of(record("2026-12-05T20:00:00Z", wall=30.0)) == 30.0


def test_spent_names_the_budget_the_period_and_the_reset() -> None:
    spec = BudgetSpec(qpu_seconds=10, sessions=5, period=Period.DAY)
    records = [
        record("2026-12-05T01:00:00Z", wall=40, quantum=6),
        record("2026-12-05T02:00:00Z", wall=8),
        record("2026-12-04T23:59:59Z", wall=99),  # yesterday: another period
    ]
    st = evaluate("team-a", spec, records, NOW)
    assert st.spent
    assert (st.used.qpu_seconds, st.used.sessions) == (14.0, 2)
    assert "QPU budget team-a/qpu-budget is spent: 14 of 10 QPU-seconds" in st.message
    assert "day period that began 2026-12-05T00:00:00Z" in st.message
    assert "resets at 2026-12-06T00:00:00Z" in st.message
    assert st.resets_at == "2026-12-06T00:00:00Z"


def test_within_budget_is_not_spent() -> None:
    st = evaluate("team-a", BudgetSpec(sessions=2), [record("2026-12-05T01:00:00Z", 1)], NOW)
    assert not st.spent
    assert "1 of 2 sessions" in st.message


@pytest.mark.parametrize(
    ("policy", "spent"), [(UnknownUsage.DENY, True), (UnknownUsage.ALLOW, False)]
)
def test_unreadable_usage_is_said_and_the_policy_applies(policy: UnknownUsage, spent: bool) -> None:
    spec = BudgetSpec(sessions=2, on_usage_unknown=policy)
    st = evaluate("team-a", spec, None, NOW, error="HTTP 403 Forbidden")
    assert st.spent is spent
    assert st.usage_known is False
    assert "usage cannot be read (HTTP 403 Forbidden)" in st.message
    assert policy.value in st.message


def test_keeper_restores_the_budget_at_the_period_boundary() -> None:
    """The keeper's own loop, with a clock the test moves: spent, then restored at the reset
    without any event."""
    now = [datetime(2026, 12, 5, 20, 0, 50, tzinfo=UTC)]
    records = [record("2026-12-05T20:00:10Z", wall=5)]

    async def scenario() -> None:
        written: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def list_records(ns: str) -> list[dict[str, Any]]:
            return records

        async def write(ns: str, status: dict[str, Any]) -> None:
            written.put_nowait(status)

        keeper = BudgetKeeper(list_records, write, resync=3600, debounce=0, clock=lambda: now[0])
        task = asyncio.get_running_loop().create_task(keeper.run())
        keeper.budget_event(
            {
                "metadata": {"name": "qpu-budget", "namespace": "team-a", "generation": 1},
                "spec": {"sessions": 1, "periodSeconds": 60, "periodStart": "2026-12-05T20:00:00Z"},
            },
            None,
        )
        first = await asyncio.wait_for(written.get(), 5)
        assert first["spent"] is True
        assert keeper.spent("team-a")
        now[0] = datetime(2026, 12, 5, 20, 1, 0, tzinfo=UTC)  # the next period began
        keeper._wake.set()  # the loop's timer was computed with the old clock
        second = await asyncio.wait_for(written.get(), 5)
        assert second["spent"] is False
        assert second["periodStart"] == "2026-12-05T20:01:00Z"
        assert keeper.spent("team-a") is None
        task.cancel()

    asyncio.run(scenario())


def test_generated_file_and_chart_copy_are_current() -> None:
    assert packaging.BUDGET_CRD_SOURCE.read_text() == crd.rendered_files()[budget_crd.OUTPUT]
    assert packaging.BUDGET_CRD_CHART_COPY.read_bytes() == packaging.BUDGET_CRD_SOURCE.read_bytes()


@pytest.mark.parametrize("version", ["1.34", "1.37"])
def test_crd_is_valid_for_kubernetes(version: str) -> None:
    kubernetes_validate.validate(budget_crd.crd(), version, strict=True)


def test_our_crds_names_never_collide() -> None:
    """kubectl names (plural, singular, short names) are one namespace per API group: the
    apiserver refuses a CRD whose short name another of ours already has."""
    names: list[str] = []
    for obj in (crd.crd(), usage_crd.crd(), budget_crd.crd()):
        n = obj["spec"]["names"]
        names += [n["plural"], n["singular"], *n.get("shortNames", [])]
    assert len(names) == len(set(names)), sorted(names)
