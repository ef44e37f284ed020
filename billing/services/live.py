"""The database side of the live view (``/v1/live``): the base the feed refreshes — this
month's attributed usage up to the current hour, and each account's amount rated so far.
The model is :mod:`billing.services.live_view`; the Kafka side
:mod:`billing.adapters.live_feed`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from billing.domain.accounts import Attributor
from billing.domain.money import format_money
from billing.services.billing_run import preview_accounts
from billing.services.live_view import LiveBase, day_start, hour_start, month_start
from billing.services.usage import load_attributor, read_usage

__all__ = ["read_base"]


def read_base(
    engine: Engine,
    now: float,
    rated: dict[str, dict[str, str]] | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[LiveBase, Attributor]:
    """This month's attributed usage up to the current hour, and each account's rated amount
    (rated now unless ``rated`` is given: rating every account is the expensive part)."""
    until = hour_start(now)
    start = min(month_start(now), day_start(until))
    attributor = load_attributor(engine)
    rows = read_usage(
        engine, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(until, UTC), attributor=attributor
    )
    if rated is not None:
        return LiveBase(base_until=until, rows=rows, rated=rated, refreshed_at=now), attributor
    period = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
    month_rows = read_usage(
        engine,
        datetime.fromtimestamp(month_start(now), UTC),
        datetime.fromtimestamp(now, UTC) + timedelta(hours=1),
        attributor=attributor,
    )
    # the catalog is read once for all accounts (UNASSIGNED is not one)
    rated = {
        account: {
            "currency": p.currency,
            "subtotal": format_money(p.subtotal, p.currency),
            "total": format_money(p.total, p.currency),
        }
        for account, p in preview_accounts(engine, period, month_rows, source_order).items()
    }
    return LiveBase(base_until=until, rows=rows, rated=rated, refreshed_at=now), attributor
