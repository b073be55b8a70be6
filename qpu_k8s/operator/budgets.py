"""QuantumBudgets: the operator tallies each namespace's usage records into its budget's status.

Enforcement is the apiserver's: a ValidatingAdmissionPolicy (chart template
``budget-policy.yaml``) takes the namespace's ``qpu-budget`` as its parameter and refuses
pods that request ``quantum.example.com/qpu`` and ResourceClaims of our DeviceClass while
``status.spent`` is true, with ``status.message`` as the refusal. Chosen over a
ResourceQuota set to "what is left" because a quota's refusal can only name the quota, not
the period or when it resets, and a lane count cannot express QPU seconds; and over a
webhook of our own because the apiserver keeps enforcing it while the operator is down
(with the last status written, which the status says).

The tally runs when a budget or a usage record of its namespace changes, at each period
boundary (the budget is restored then), and every ``resync`` seconds. When the records
cannot be listed, status says so (``usageKnown: false``) and ``spec.onUsageUnknown``
decides: Deny (default) counts the budget as spent, Allow does not; never silently open.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from qpu_k8s.core.budget import (
    BUDGET_NAME,
    BudgetSpec,
    BudgetStatus,
    UnknownUsage,
    Used,
    current_period,
)
from qpu_k8s.core.timestamps import parse_rfc3339, rfc3339
from qpu_k8s.operator import metrics as m

log = logging.getLogger(__name__)

ListRecords = Callable[[str], Awaitable[list[dict[str, Any]]]]
WriteStatus = Callable[[str, dict[str, Any]], Awaitable[None]]


def qpu_seconds_of(record: Mapping[str, Any]) -> float:
    """The vendor's QPU seconds where it reported them, else the session's wall time."""
    spec = record.get("spec") or {}
    vendor = spec.get("vendor") or {}
    if vendor.get("state") == "Reported" and vendor.get("quantumSeconds") is not None:
        return float(vendor["quantumSeconds"])
    return float(spec.get("wallSeconds") or 0.0)


def tally(records: Iterable[Mapping[str, Any]], start: datetime, end: datetime) -> Used:
    """Usage released in [start, end)."""
    seconds, sessions = 0.0, 0
    for r in records:
        released = (r.get("spec") or {}).get("releasedAt")
        if not released:
            continue
        at = parse_rfc3339(str(released))
        if start <= at < end:
            seconds += qpu_seconds_of(r)
            sessions += 1
    return Used(qpu_seconds=round(seconds, 3), sessions=sessions)


def _limits(spec: BudgetSpec, used: Used) -> tuple[list[str], list[str]]:
    """(what is spent, what each limit stands at)."""
    spent, shown = [], []
    if spec.qpu_seconds is not None:
        line = f"{used.qpu_seconds:g} of {spec.qpu_seconds:g} QPU-seconds"
        shown.append(line)
        if used.qpu_seconds >= spec.qpu_seconds:
            spent.append(line)
    if spec.sessions is not None:
        line = f"{used.sessions} of {spec.sessions} sessions"
        shown.append(line)
        if used.sessions >= spec.sessions:
            spent.append(line)
    return spent, shown


def evaluate(
    namespace: str,
    spec: BudgetSpec,
    records: list[dict[str, Any]] | None,
    now: datetime,
    *,
    generation: int | None = None,
    created: datetime | None = None,
    error: str = "",
) -> BudgetStatus:
    """The budget's status for the period ``now`` is in; ``records`` None: unreadable."""
    start, end = current_period(spec, now, created)
    where = f"QPU budget {namespace}/{BUDGET_NAME}"
    period = f"{spec.period_seconds} s" if spec.period_seconds else spec.period.value.lower()
    when = f"the {period} period that began {rfc3339(start)}; it resets at {rfc3339(end)}"
    common: dict[str, Any] = {
        "period_start": rfc3339(start),
        "resets_at": rfc3339(end),
        "observed_generation": generation,
        "updated_at": rfc3339(now),
    }
    if records is None:
        deny = spec.on_usage_unknown is UnknownUsage.DENY
        action = (
            "new QPU requests are refused until it can (spec.onUsageUnknown: Deny)"
            if deny
            else "new QPU requests are let through (spec.onUsageUnknown: Allow)"
        )
        return BudgetStatus(
            **common,
            spent=deny,
            usage_known=False,
            message=f"{where}: usage cannot be read ({error or 'unknown error'}); {action}",
        )
    used = tally(records, start, end)
    spent, shown = _limits(spec, used)
    if spent:
        message = (
            f"{where} is spent: {' and '.join(spent)} used in {when}. Running work "
            f"finishes; new QPU requests in {namespace} are refused until the reset "
            "(a cluster admin can raise spec.qpuSeconds or spec.sessions)"
        )
    else:
        message = f"{where}: {', '.join(shown)} used in {when}"
    return BudgetStatus(**common, used=used, spent=bool(spent), message=message)


def status_body(status: BudgetStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


class BudgetKeeper:
    """Keeps every budget's status current; the controller feeds it watch events."""

    def __init__(
        self,
        list_records: ListRecords,
        write_status: WriteStatus,
        *,
        resync: float = 60.0,
        debounce: float = 0.5,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_change: Callable[[str], None] = lambda ns: None,
    ) -> None:
        self.list_records = list_records
        self.write_status = write_status
        self.resync = resync
        self.debounce = debounce
        self.clock = clock
        self.on_change = on_change
        self.budgets: dict[str, dict[str, Any]] = {}
        self.written: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._resets: list[tuple[datetime, str]] = []
        self._reset_at: dict[str, datetime] = {}

    # -- what the watches show ---------------------------------------------------------------
    def budget_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        if meta.get("name") != BUDGET_NAME:
            return  # the CRD refuses other names; nothing to enforce for them
        ns = str(meta.get("namespace"))
        if event_type == "DELETED":
            self.budgets.pop(ns, None)
            was_spent = bool((self.written.pop(ns, None) or {}).get("spent"))
            self._reset_at.pop(ns, None)
            m.forget_budget(ns)
            if was_spent:
                self.on_change(ns)
            return
        self.budgets[ns] = dict(body)
        self.touch(ns)

    def usage_event(self, body: Mapping[str, Any]) -> None:
        ns = (body.get("spec") or {}).get("namespace")
        if ns in self.budgets:
            self.touch(str(ns))

    def touch(self, ns: str) -> None:
        self._dirty.add(ns)
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        last_resync = asyncio.get_running_loop().time()
        while True:
            timeout = self.resync
            if self._resets:
                left = (self._resets[0][0] - self.clock()).total_seconds()
                timeout = max(0.0, min(timeout, left))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                await asyncio.sleep(self.debounce)  # let a burst of record events settle
            except TimeoutError:
                pass
            self._wake.clear()
            now = self.clock()
            while self._resets and self._resets[0][0] <= now:
                at, ns = heapq.heappop(self._resets)
                if self._reset_at.get(ns) == at:
                    del self._reset_at[ns]
                    self._dirty.add(ns)
            if asyncio.get_running_loop().time() - last_resync >= self.resync:
                last_resync = asyncio.get_running_loop().time()
                self._dirty |= set(self.budgets)
            dirty, self._dirty = self._dirty, set()
            for ns in sorted(dirty):
                await self.reconcile(ns)

    async def reconcile(self, ns: str) -> BudgetStatus | None:
        body = self.budgets.get(ns)
        if body is None:
            return None
        try:
            spec = BudgetSpec.model_validate(body.get("spec") or {})
        except ValidationError as err:  # the CRD schema makes this rare (e.g. an old object)
            log.warning("budget not valid", extra={"namespace": ns, "error": str(err)})
            return None
        records: list[dict[str, Any]] | None
        error = ""
        try:
            records = await self.list_records(ns)
        except Exception as err:
            records, error = None, f"{type(err).__name__}: {err}"
        meta = body.get("metadata") or {}
        generation = meta.get("generation")
        created = (
            parse_rfc3339(meta["creationTimestamp"]) if meta.get("creationTimestamp") else None
        )
        now = self.clock()
        status = evaluate(
            ns,
            spec,
            records,
            now,
            generation=generation if isinstance(generation, int) else None,
            created=created,
            error=error,
        )
        resets = parse_rfc3339(status.resets_at)
        if self._reset_at.get(ns) != resets:
            self._reset_at[ns] = resets
            heapq.heappush(self._resets, (resets, ns))
        m.BUDGET_SPENT.labels(ns).set(1 if status.spent else 0)
        m.BUDGET_USAGE_KNOWN.labels(ns).set(1 if status.usage_known else 0)
        m.BUDGET_USED_QPU_SECONDS.labels(ns).set(status.used.qpu_seconds)
        m.BUDGET_USED_SESSIONS.labels(ns).set(status.used.sessions)
        out = status_body(status)
        comparable = {k: v for k, v in out.items() if k != "updatedAt"}
        if comparable != self.written.get(ns):
            try:
                await self.write_status(ns, out)
            except Exception as err:
                # Written at the next resync (or the next event of the namespace).
                log.warning("budget status not written", extra={"namespace": ns, "error": str(err)})
                return status
            flipped = status.spent != bool((self.written.get(ns) or {}).get("spent"))
            self.written[ns] = comparable
            if flipped:
                log.info(
                    "budget spent" if status.spent else "budget has room",
                    extra={"namespace": ns, "detail": status.message},
                )
                self.on_change(ns)
        return status

    def spent(self, ns: str) -> str | None:
        """The refusal message while the namespace's budget is spent, else None."""
        written = self.written.get(ns)
        if written and written.get("spent"):
            return str(written.get("message", ""))
        return None
