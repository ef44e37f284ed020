"""Statements: a partner's view of its usage in a period (not a tax document).

Totals per source and meter, a daily series, breakdowns by topic, client id, principal and
direction, the amount rated so far (what the invoice would say now), and — where two sources
saw the same traffic — the difference between them, so finance can spot a proxy or exporter
gap. As JSON (a dict), CSV (the daily series and breakdowns, via pandas) or PDF.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, time
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from billing.services.billing_run import parse_period, preview
from billing.services.usage import group, usage_rows

__all__ = ["statement", "statement_csv"]

QUANTITIES = ("bytes", "records", "requests", "denied_requests")


def statement(engine: Engine, account: str, period: str, now: datetime | None = None) -> dict[str, Any]:
    start_day, end_day = parse_period(period)
    start = datetime.combine(start_day, time(), UTC)
    end = datetime.combine(end_day, time(), UTC)
    if now is not None:
        end = min(end, now)

    # one read of the account's attributed daily rows serves every breakdown and the rating
    rows = usage_rows(engine, start, end, account) if end > start else []

    def by(*fields: str) -> list[dict[str, Any]]:
        return group(rows, fields)

    by_source = by("source", "direction")
    gaps = []
    for direction in ("produce", "consume"):
        seen = {r["source"]: r for r in by_source if r["direction"] == direction}
        if "proxy" in seen and "broker_metrics" in seen:
            p, b = seen["proxy"], seen["broker_metrics"]
            gaps.append(
                {
                    "direction": direction,
                    "proxy_bytes": p["bytes"],
                    "broker_metrics_bytes": b["bytes"],
                    "difference_bytes": p["bytes"] - b["bytes"],
                    "proxy_records": p["records"],
                    "broker_metrics_records": b["records"],
                }
            )
    rated = preview(engine, account, period, rows)
    return {
        "account": account,
        "period": period,
        "from": start.isoformat().replace("+00:00", "Z"),
        "to": end.isoformat().replace("+00:00", "Z"),
        "currency": rated.currency,
        "plan": rated.plan,
        "totals": by_source,
        "daily": by("day", "source", "direction"),
        "by_topic": by("topic", "source", "direction"),
        "by_client_id": by("client_id", "source", "direction"),
        "by_principal": by("principal", "source", "direction"),
        "source_differences": gaps,
        "rated_so_far": {
            "lines": rated.lines,
            "subtotal": str(rated.subtotal),
            "tax": str(rated.tax),
            "total": str(rated.total),
        },
    }


def statement_csv(doc: dict[str, Any]) -> str:
    """One CSV: every breakdown row with a ``section`` column naming where it comes from."""
    frames = []
    for section in ("totals", "daily", "by_topic", "by_client_id", "by_principal"):
        rows = doc[section]
        if rows:
            frame = pd.DataFrame(rows)
            frame.insert(0, "section", section)
            frames.append(frame)
    out = io.StringIO()
    if frames:
        merged = pd.concat(frames, ignore_index=True)
        keys = [c for c in merged.columns if c not in QUANTITIES]
        merged = merged[keys + [q for q in QUANTITIES if q in merged.columns]]
        merged.insert(0, "account", doc["account"])
        merged.insert(1, "period", doc["period"])
        merged.to_csv(out, index=False)
    return out.getvalue()
