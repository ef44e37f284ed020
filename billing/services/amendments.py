"""Amendments: finance corrects the usage of a range, with an audit trail.

* :func:`import_usage` — corrected usage rows for ``[start, end)`` with a reason and an actor
  (``streamtoll usage import``). The rules of what an import stores are
  :mod:`billing.domain.amendments`' (the file replaces the usage of the keys it names in the
  range; differences are stored beside the sink's rows, never over them; the same file twice
  changes nothing the second time: nothing is written and no amendment is recorded). Here: one
  transaction that holds the amendments' lock, reads the usage now, stores the amendment, its
  rows and, per account and billing period it touched, the rated amount (before tax) and the
  usage before → after.
* Then the periods: every touched period in which a touched account has a **draft** is billed
  again (:func:`billing.services.billing_run.run_billing`, which leaves finalized invoices
  alone), so the drafts show the corrected usage at once. A touched period whose invoice is
  **finalized** is never edited: the next ``bill`` of a later period re-rates it and bills the
  difference as an adjustment line (``domain.invoicing.late_usage_adjustment``), as for late
  usage. A correction that *lowers* a finalized period gives a negative adjustment line on the
  next invoice — decided here over a credit note: the difference is a correction of usage,
  not a commercial decision, and it is settled the way late usage already is (a credit note
  stays finance's own act, ``streamtoll credit-notes create``).
* :func:`list_amendments`, :func:`amendment_view`: who, when, why, the range, and the amounts
  moved per account and period.

Usage of no account (``unassigned``) can be corrected too; it has no rated amount (it is never
invoiced), so it is stored in the rows but not in the amounts. Amounts leave as plain text with
the currency's minor digits. Each function takes an engine or a factory of units of work.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from billing.adapters.uow import Database, units_of_work
from billing.domain.accounts import UNASSIGNED
from billing.domain.amendments import Correction, Key, Quantities, amendment_deltas, parse_corrections
from billing.domain.money import format_money
from billing.domain.usage import UsageRow
from billing.errors import AmendmentError
from billing.services.billing_run import parse_period, preview, preview_accounts, run_billing
from billing.services.ports import AmendmentAmount, AmendmentRecord, UnitOfWork

__all__ = [
    "AmendmentResult",
    "amendment_doc",
    "amendment_view",
    "import_usage",
    "list_amendments",
    "moved_summary",
    "remeter_usage",
]

_QUANTITIES = ("bytes", "records", "requests", "denied_requests")


@dataclass
class AmendmentResult:
    """What an import did (or, with ``dry_run``, would do): ``amendment`` None when nothing
    changed (or a dry run); per account and period what moved and what happens to its invoice."""

    amendment: int | None
    dry_run: bool
    record: AmendmentRecord
    effects: list[dict[str, Any]] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.record.rows > 0

    def as_dict(self) -> dict[str, Any]:
        doc = amendment_doc(self.record)
        doc.update(id=self.amendment, dry_run=self.dry_run, changed=self.changed, rerun=self.rerun)
        for moved, effect in zip(doc["amounts"], self.effects, strict=True):
            moved.update(effect)
        return doc


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), UTC)


def _period_of(day: date) -> str:
    return day.strftime("%Y-%m")


def _usage_totals(rows: Sequence[UsageRow]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        acc = out[(r.source, r.direction)]
        for i, q in enumerate((r.bytes, r.records, r.requests, r.denied_requests)):
            acc[i] += q
    return out


def _usage_moved(before: Sequence[UsageRow], after: Sequence[UsageRow]) -> list[dict[str, Any]]:
    """Per source and direction, the period's quantities before → after (those that moved)."""
    b, a = _usage_totals(before), _usage_totals(after)
    out = []
    for source, direction in sorted(set(b) | set(a)):
        was, now = b.get((source, direction), [0] * 4), a.get((source, direction), [0] * 4)
        if was != now:
            out.append(
                {
                    "source": source,
                    "direction": direction,
                    "before": dict(zip(_QUANTITIES, was, strict=True)),
                    "after": dict(zip(_QUANTITIES, now, strict=True)),
                }
            )
    return out


def _delta_row(key: Key, hour: datetime, q: Quantities, account: str) -> UsageRow:
    source, principal, client_id, cluster, topic, direction = key
    return UsageRow(
        source, account, principal, client_id, cluster, topic, direction, hour, hour.date(), q[0], q[1], q[2], q[3]
    )


def import_usage(
    engine: Database,
    records: Sequence[Mapping[str, Any]],
    start: datetime,
    end: datetime,
    reason: str,
    actor: str,
    dry_run: bool = False,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AmendmentResult:
    """Import corrected usage rows for ``[start, end)`` (see the module's docstring). Every
    problem of the file and the arguments is reported at once (:class:`AmendmentError`), and
    then nothing is written."""
    corrections = _checked(records, start, end, reason, actor)
    return _amend(engine, "import", corrections, False, start, end, reason, actor, dry_run, source_order, clock)


def remeter_usage(
    engine: Database,
    replayed: Sequence[UsageRow],
    start: datetime,
    end: datetime,
    reason: str,
    actor: str,
    dry_run: bool = False,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AmendmentResult:
    """Make the usage of ``[start, end)`` what a replay metered (an amendment of kind
    ``remeter``): ``replayed`` are the hourly rows the replay's sink wrote for the range (in the
    scratch database of the runbook's "Backfill and replay"). Unlike an import, the replay is
    the whole range: every key it did not meter in the range becomes 0. Idempotent as an import."""
    records = [
        {**{k: getattr(r, k) for k in (*_KEY, *_QUANTITIES)}, "hour": r.hour.isoformat()}
        for r in replayed
        if start <= r.hour < end
    ]
    corrections = _checked(records, start, end, reason, actor, empty_ok=True)
    return _amend(engine, "remeter", corrections, True, start, end, reason, actor, dry_run, source_order, clock)


_KEY = ("source", "principal", "client_id", "virtual_cluster", "topic", "direction")


def _checked(
    records: Sequence[Mapping[str, Any]],
    start: datetime,
    end: datetime,
    reason: str,
    actor: str,
    empty_ok: bool = False,
) -> list[Correction]:
    problems = []
    if not reason.strip():
        problems.append("a reason is required: say why the usage is corrected")
    if not actor.strip():
        problems.append("an actor is required: say who corrects the usage")
    corrections: list[Correction] = []
    if records or not empty_ok:
        try:
            corrections = parse_corrections(records, start, end)
        except AmendmentError as exc:
            problems.extend(exc.problems)
    elif end <= start:
        problems.append("the range is empty: --to must be after --from")
    elif (start.minute, start.second, start.microsecond, end.minute, end.second, end.microsecond) != (0,) * 6:
        problems.append("--from and --to must be on the hour")
    if problems:
        raise AmendmentError(problems)
    return corrections


def _amend(
    engine: Database,
    kind: str,
    corrections: Sequence[Correction],
    every_key: bool,
    start: datetime,
    end: datetime,
    reason: str,
    actor: str,
    dry_run: bool,
    source_order: Mapping[str, tuple[str, ...]] | None,
    clock: Callable[[], datetime],
) -> AmendmentResult:
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    uows = units_of_work(engine)
    with uows() as uow:
        uow.amendments.lock()
        attributor = uow.catalog.attributor()
        current: dict[tuple[Key, datetime], Quantities] = {}
        for r in uow.usage.rows(start, end, attributor, hourly=True):
            slot = ((r.source, r.principal, r.client_id, r.virtual_cluster, r.topic, r.direction), r.hour)
            was = current.get(slot, (0, 0, 0, 0))
            current[slot] = (was[0] + r.bytes, was[1] + r.records, was[2] + r.requests, was[3] + r.denied_requests)
        deltas = amendment_deltas(corrections, current, every_key)
        rows = [
            _delta_row(key, hour, q, attributor.account_for(key[1], key[2], key[3], hour.date()))
            for (key, hour), q in deltas.items()
        ]
        amounts, effects = _amounts(uows, uow, rows, source_order)
        record = AmendmentRecord(0, kind, start, end, reason.strip(), actor.strip(), clock(), amounts, len(rows))
        amendment = None if dry_run or not rows else uow.amendments.insert(record, rows)
    rerun: list[str] = []
    if amendment is not None:
        rerun = sorted({m.period for m, e in zip(amounts, effects, strict=True) if e["status"] == "draft"})
        for period in rerun:
            run_billing(uows, period, source_order=source_order, clock=clock)
    return AmendmentResult(amendment, dry_run, record, effects, rerun)


def _amounts(
    uows: Callable[[], UnitOfWork],
    uow: UnitOfWork,
    rows: Sequence[UsageRow],
    source_order: Mapping[str, tuple[str, ...]] | None,
) -> tuple[list[AmendmentAmount], list[dict[str, Any]]]:
    """Per account and period the differences touch: the rated amount before tax and the usage,
    before → after, and what happens to its invoice. Each period's usage is read once, and
    rated with the catalog read once per period and side (a re-meter can touch every account)."""
    touched: dict[str, dict[str, list[UsageRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.account != UNASSIGNED:
            touched[_period_of(r.day)][r.account].append(r)
    attributor = uow.catalog.attributor()
    terms = uow.catalog.accounts()
    amounts, effects = [], []
    for period, accounts in sorted(touched.items()):
        start, end = parse_period(period)
        before: dict[str, list[UsageRow]] = defaultdict(list)
        for r in uow.usage.rows(_midnight(start), _midnight(end), attributor):
            if r.account in accounts:
                before[r.account].append(r)
        after = {a: [*before[a], *deltas] for a, deltas in accounts.items()}
        rated = [
            preview_accounts(uows, period, [r for a in sorted(accounts) for r in side[a]], source_order)
            for side in (before, after)
        ]
        for account in sorted(accounts):
            was, now = (
                (side[account] if account in side else preview(uows, account, period, [], source_order)).subtotal
                for side in rated
            )
            currency = terms[account].currency
            amounts.append(
                AmendmentAmount(account, period, currency, was, now, _usage_moved(before[account], after[account]))
            )
            effects.append(_effect(uow, account, start))
    return amounts, effects


def _effect(uow: UnitOfWork, account: str, start: date) -> dict[str, Any]:
    """What happens to the account's invoice of the period starting ``start``."""
    invoice = uow.invoices.current(account, start)
    if invoice is None:
        return {"status": None, "invoice": None, "effect": "billed with the corrected usage"}
    if invoice.status == "finalized":
        return {
            "status": "finalized",
            "invoice": invoice.number,
            "effect": f"{invoice.number} stays as it is: the difference is an adjustment line "
            "on the account's next invoice",
        }
    return {"status": "draft", "invoice": f"draft-{invoice.id}", "effect": "draft billed again"}


def amendment_doc(a: AmendmentRecord) -> dict[str, Any]:
    """An amendment as JSON: money as plain text with the currency's minor digits."""

    def at(t: datetime) -> str:
        return t.astimezone(UTC).isoformat().replace("+00:00", "Z")

    return {
        "id": a.id,
        "kind": a.kind,
        "from": at(a.range_from),
        "to": at(a.range_to),
        "reason": a.reason,
        "actor": a.actor,
        "created_at": at(a.created_at),
        "rows": a.rows,
        "amounts": [
            {
                "account": m.account,
                "period": m.period,
                "currency": m.currency,
                "amount_before": format_money(m.amount_before, m.currency),
                "amount_after": format_money(m.amount_after, m.currency),
                "difference": format_money(m.amount_after - m.amount_before, m.currency),
                "usage": m.usage,
            }
            for m in a.amounts
        ],
    }


def moved_summary(a: AmendmentRecord) -> str:
    """``acme 2026-11 168.00 → 208.00 EUR; …`` (a list's one column)."""
    return "; ".join(
        f"{m.account} {m.period} {format_money(m.amount_before, m.currency)} → "
        f"{format_money(m.amount_after, m.currency)} {m.currency}"
        for m in a.amounts
    )


def list_amendments(engine: Database) -> list[AmendmentRecord]:
    """Every amendment, oldest first."""
    with units_of_work(engine)() as uow:
        return uow.amendments.listing()


def amendment_view(engine: Database, amendment_id: int) -> dict[str, Any]:
    """One amendment as JSON; :class:`~billing.errors.AmendmentNotFound` when there is none."""
    with units_of_work(engine)() as uow:
        return amendment_doc(uow.amendments.find(amendment_id))
