"""The QuantumBudget: how much QPU a namespace may use per period, and what is left.

One object per namespace, named ``qpu-budget``, in the namespace it limits. Only cluster
admins write it (the built-in ``edit``/``admin`` roles carry no rights on our kinds), so a
team cannot raise its own budget. The operator keeps ``status`` from the namespace's
QuantumUsage records; a ValidatingAdmissionPolicy with the budget as its parameter refuses
new QPU requests in that namespace while ``status.spent`` is true, with ``status.message``
(which names the budget, the period and when it resets). Work that runs already finishes.

What counts, per period (calendar-aligned in UTC, or ``periodSeconds`` long from the
budget's ``spec.periodStart``):

* ``qpuSeconds``: each released acquisition's QPU seconds as the vendor reports them
  (IBM: the jobs' quantum seconds); where the vendor reports none, the session's wall time
  (acquired to released), which is never less than what the QPU was held for;
* ``sessions``: released acquisitions.

An acquisition counts in the period it was released in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from qpu_k8s.core.timestamps import parse_rfc3339

BUDGET_NAME = "qpu-budget"


class Period(StrEnum):
    HOUR = "Hour"
    DAY = "Day"
    WEEK = "Week"
    MONTH = "Month"


class UnknownUsage(StrEnum):
    """What the budget does while the usage records cannot be read."""

    DENY = "Deny"
    ALLOW = "Allow"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class BudgetSpec(_Model):
    """How much QPU the namespace may use per period (at least one limit)."""

    qpu_seconds: Annotated[
        float | None,
        Field(
            default=None,
            ge=0,
            description="QPU seconds per period: the vendor's figure where it reports one, "
            "else the session's wall time.",
        ),
    ] = None
    sessions: Annotated[
        int | None, Field(default=None, ge=0, description="Acquisitions per period.")
    ] = None
    period: Annotated[
        Period,
        Field(
            default=Period.MONTH,
            description="Hour, Day, Week (from Monday) or Month, in UTC. Ignored when "
            "periodSeconds is set.",
        ),
    ] = Period.MONTH
    period_seconds: Annotated[
        int | None,
        Field(
            default=None,
            ge=10,
            le=31_622_400,
            description="A period of this many seconds instead, counted from periodStart.",
        ),
    ] = None
    period_start: Annotated[
        str | None,
        Field(
            default=None,
            json_schema_extra={"format": "date-time"},
            description="With periodSeconds: when the first period began (RFC 3339; "
            "default: the budget's creation).",
        ),
    ] = None
    on_usage_unknown: Annotated[
        UnknownUsage,
        Field(
            default=UnknownUsage.DENY,
            description="While usage cannot be read: Deny new QPU requests (default) or "
            "Allow them. Either way status and metrics say usage is unknown.",
        ),
    ] = UnknownUsage.DENY


class Used(_Model):
    qpu_seconds: float = 0.0
    sessions: int = 0


class BudgetStatus(_Model):
    """What the operator found for the current period."""

    period_start: str = ""
    resets_at: str = ""
    used: Used = Field(default_factory=Used)
    spent: bool = False
    usage_known: bool = True
    message: str = ""
    observed_generation: int | None = None
    updated_at: str = ""


def current_period(
    spec: BudgetSpec, now: datetime, created: datetime | None = None
) -> tuple[datetime, datetime]:
    """[start, end) of the period ``now`` is in; ``periodSeconds`` periods count from
    ``periodStart``, else from when the budget was ``created``."""
    now = now.astimezone(UTC)
    if spec.period_seconds is not None:
        origin = parse_rfc3339(spec.period_start) if spec.period_start else (created or now)
        length = timedelta(seconds=spec.period_seconds)
        n = max(0, (now - origin) // length)
        start = origin + n * length
        return start, start + length
    if spec.period is Period.HOUR:
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if spec.period is Period.DAY:
        return day, day + timedelta(days=1)
    if spec.period is Period.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end
