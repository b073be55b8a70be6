"""``qpu-k8s usage``: who used how much QPU in a period, from the QuantumUsage records.

Reads the records (``list`` on quantumusages in the qpu-k8s namespace, so it needs that
right and nothing else), keeps those released in the period and sums them per workload
namespace, owner and backend. Vendor figures are summed over the records that have them;
the ``UNREPORTED`` column counts records whose vendor reported nothing (so a zero in
``QPU-S`` is never a missing figure in disguise).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from qpu_k8s.core.flags import add_flag

GROUPS = ("namespace", "owner", "backend")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--kubeconfig", "", "kubeconfig (default: $KUBECONFIG, then in-cluster)")
    parser.add_argument(
        "-n", "--namespace", default="qpu-system", help="where the records are (the release's)"
    )
    parser.add_argument(
        "--month", help="YYYY-MM (UTC); default: the current month unless --since is given"
    )
    parser.add_argument("--since", help="start, RFC 3339 or YYYY-MM-DD (UTC), inclusive")
    parser.add_argument("--until", help="end, RFC 3339 or YYYY-MM-DD (UTC), exclusive")
    parser.add_argument(
        "--by",
        default="namespace,owner,backend",
        help=f"comma-separated grouping, from {', '.join(GROUPS)} (default: all three)",
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")


def _when(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"{flag}: {text!r} is not a date (use 2026-12-01 or RFC 3339)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def period(
    month: str | None, since: str | None, until: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """The half-open period [start, end) the flags ask for."""
    if month or not since:
        try:
            start = (
                datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
                if month
                else now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            )
        except ValueError:
            raise SystemExit(f"--month: {month!r} is not YYYY-MM") from None
        y, m = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return start, start.replace(year=y, month=m)
    start = _when(since, "--since")
    end = _when(until, "--until") if until else now
    return start, end


@dataclass
class Row:
    namespace: str = ""
    owner: str = ""
    backend: str = ""
    acquisitions: int = 0
    wall_seconds: float = 0.0
    quantum_seconds: float = 0.0
    jobs: int = 0
    unreported: int = 0


def _owner(spec: Mapping[str, Any]) -> str:
    owner = spec.get("owner") or {}
    if owner.get("kind") and owner.get("name"):
        return f"{owner['kind']}/{owner['name']}"
    if spec.get("claim"):
        return f"ResourceClaim/{spec['claim']}"
    return f"Pod/{spec.get('pod', '')}"


def summarize(
    items: Iterable[Mapping[str, Any]], start: datetime, end: datetime, by: Iterable[str]
) -> list[Row]:
    keys = [k for k in GROUPS if k in set(by)]
    rows: dict[tuple[str, ...], Row] = {}
    for item in items:
        spec = item.get("spec") or {}
        released = _when(str(spec.get("releasedAt", "")), "releasedAt")
        if not start <= released < end:
            continue
        values = {
            "namespace": str(spec.get("namespace", "")),
            "owner": _owner(spec),
            "backend": str(spec.get("backend", "")),
        }
        key = tuple(values[k] for k in keys)
        shown = {k: values[k] if k in keys else "" for k in GROUPS}
        row = rows.setdefault(
            key, Row(namespace=shown["namespace"], owner=shown["owner"], backend=shown["backend"])
        )
        row.acquisitions += 1
        row.wall_seconds += float(spec.get("wallSeconds") or 0.0)
        vendor = spec.get("vendor") or {}
        if vendor.get("state") != "Reported":
            row.unreported += 1
            continue
        row.quantum_seconds += float(vendor.get("quantumSeconds") or 0.0)
        row.jobs += int(vendor.get("jobCount") or 0)
    return [rows[k] for k in sorted(rows)]


def table(rows: list[Row], by: Iterable[str]) -> str:
    keys = [k for k in GROUPS if k in set(by)]
    head = [k.upper() for k in keys] + ["ACQUISITIONS", "WALL-S", "QPU-S", "JOBS", "UNREPORTED"]
    lines = [head]
    for r in rows:
        lines.append(
            [getattr(r, k) for k in keys]
            + [
                str(r.acquisitions),
                f"{r.wall_seconds:.1f}",
                f"{r.quantum_seconds:.3f}",
                str(r.jobs),
                str(r.unreported),
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def run(args: argparse.Namespace) -> int:
    from kubernetes import client

    from qpu_k8s.core.kubeclient import api_client, as_object
    from qpu_k8s.core.names import API_GROUP, API_VERSION, USAGE_PLURAL

    by = [b.strip() for b in args.by.split(",") if b.strip()]
    unknown = set(by) - set(GROUPS)
    if unknown or not by:
        print(f"--by: use some of {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    start, end = period(args.month, args.since, args.until, datetime.now(UTC))
    api = api_client(args.kubeconfig or None)
    try:
        items = as_object(
            client.CustomObjectsApi(api).list_namespaced_custom_object(
                API_GROUP, API_VERSION, args.namespace, USAGE_PLURAL, _request_timeout=30
            )
        ).get("items", [])
    finally:
        api.close()  # type: ignore[no-untyped-call]
    rows = summarize(items, start, end, by)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "since": start.isoformat(),
                    "until": end.isoformat(),
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    else:
        print(f"QPU usage released from {start.isoformat()} until {end.isoformat()}")
        print(table(rows, by))
    return 0
