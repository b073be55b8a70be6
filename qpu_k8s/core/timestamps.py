"""Kubernetes timestamps: RFC 3339 in UTC to the second, the wire form of ``metav1.Time``
(conditions, claim status, budgets, Kueue's check states)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def rfc3339(when: datetime | float | None = None) -> str:
    """``when`` (a datetime, or seconds since the epoch; default: now) as ``...T...Z``."""
    if when is None:
        when = time.time()
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp (``Z`` or an offset) as an aware datetime in UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
