"""Shadow invoices: one account's period rated under a candidate plan, beside what it really pays.

A shadow run writes nothing; it answers "what would each account have paid for this period on
that plan?" (docs/billing.md, "Shadow invoices"). The rules, and how they are read here:

* **Which days the candidate prices.** The days the account was subscribed in the period (to any
  plan): its real subscriptions' intervals, abutting or overlapping ones merged
  (:func:`subscribed_spans`), each priced with the candidate by
  :func:`~billing.domain.invoicing.rate_account` — the same rating as a billing run. So the
  candidate's base fee and minimum commitment are prorated exactly as the real subscription
  was (an account subscribed from the 10th of a 30-day month pays 21/30 of the candidate's fee),
  and a plan change inside the period becomes one candidate span over both subscriptions, its
  tiers applied to the span's total usage. Usage on days without a subscription is not priced,
  as in a billing run.
* **Not compared** (``shadow`` None, ``note`` says why): an account with no subscription in the
  period (it is billed nothing; the candidate would not apply to it either), and an account
  whose invoice currency is not the candidate's (amounts in two currencies do not subtract).
* **The real side.** The period's live standard invoice as it stands, finalized or draft
  (``real_from`` says which); with no invoice, the period rated now under the account's real
  subscriptions (``real_from`` ``rated``; no adjustment lines: those are a billing run's).
* **Adjustments.** Adjustment lines on the real invoice bill late usage of earlier periods under
  the plans then in force; the shadow carries them unchanged, so the difference is the
  candidate's alone. So it does the deductions of the period's threshold invoices
  (``billing.domain.progressive``): they were issued under the real plan, and the real total is
  the final invoice's, after them.
* **Totals.** The candidate's rounded lines plus those adjustments, through
  :func:`~billing.domain.rating.invoice_totals` with the invoice's tax rate (the account's when
  there is no invoice). ``difference = shadow total − real total``: positive, the account would
  pay more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from billing.domain.invoicing import rate_account
from billing.domain.money import format_money
from billing.domain.plans import PlanVersion
from billing.domain.rating import Totals, invoice_totals
from billing.domain.usage import MeterUsage

__all__ = ["RealBill", "ShadowBill", "rate_real", "shadow_bill", "subscribed_spans"]

Active = Sequence[tuple[date, date | None, PlanVersion]]


@dataclass(frozen=True)
class RealBill:
    """What the account really pays for the period: ``source`` is ``finalized`` or ``draft`` (its
    invoice, ``ref``) or ``rated`` (no invoice: rated now under its subscriptions)."""

    source: str
    currency: str
    tax_rate: Decimal
    totals: Totals
    adjustments: tuple[Decimal, ...] = ()
    ref: str | None = None


@dataclass(frozen=True)
class ShadowBill:
    """One account's real and shadow totals (``shadow`` None: not compared, ``note`` says why)."""

    account: str
    real: RealBill
    real_plan: str | None
    plan: str
    shadow: Totals | None
    note: str = ""

    @property
    def difference(self) -> Decimal | None:
        return None if self.shadow is None else self.shadow.total - self.real.totals.total

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: money as strings with the currency's minor digits, never floats."""
        cur = self.real.currency

        def money(amount: Decimal | None) -> str | None:
            return None if amount is None else format_money(amount, cur)

        shadow = self.shadow
        return {
            "account": self.account,
            "currency": cur,
            "real_from": self.real.source,
            "invoice": self.real.ref,
            "real_plan": self.real_plan,
            "real_subtotal": money(self.real.totals.subtotal),
            "real_tax": money(self.real.totals.tax),
            "real_total": money(self.real.totals.total),
            "shadow_plan": self.plan,
            "shadow_subtotal": money(shadow.subtotal if shadow else None),
            "shadow_tax": money(shadow.tax if shadow else None),
            "shadow_total": money(shadow.total if shadow else None),
            "difference": money(self.difference),
            "note": self.note,
        }


def subscribed_spans(active: Active, start: date, end: date) -> list[tuple[date, date | None]]:
    """The intervals ``active`` (``active_subscriptions``) covers, abutting or overlapping ones
    merged, those that reach into ``[start, end)`` (rating clips them to the period itself)."""
    spans: list[tuple[date, date | None]] = []
    for since, until, _ in sorted(active, key=lambda s: s[0]):
        if spans:
            first, last = spans[-1]
            if last is None or since <= last:
                spans[-1] = (first, None if last is None or until is None else max(last, until))
                continue
        spans.append((since, until))
    return [(s, u) for s, u in spans if s < end and (u is None or u > start)]


def _amounts(
    by_source: Mapping[str, MeterUsage],
    active: Active,
    start: date,
    end: date,
    tax_rate: Decimal,
    order: Mapping[str, tuple[str, ...]],
) -> list[Decimal]:
    return [p.line.rounded_amount for p in rate_account(by_source, active, start, end, tax_rate, order).lines]


def rate_real(
    by_source: Mapping[str, MeterUsage],
    active: Active,
    start: date,
    end: date,
    currency: str,
    tax_rate: Decimal,
    order: Mapping[str, tuple[str, ...]],
) -> RealBill:
    """The real side of an account without an invoice: the period rated now under ``active``."""
    totals = invoice_totals(_amounts(by_source, active, start, end, tax_rate, order), tax_rate, currency)
    return RealBill("rated", currency, tax_rate, totals)


def shadow_bill(
    account: str,
    by_source: Mapping[str, MeterUsage],
    active: Active,
    candidate: PlanVersion,
    label: str,
    start: date,
    end: date,
    real: RealBill,
    order: Mapping[str, tuple[str, ...]],
) -> ShadowBill:
    """``account``'s period under ``candidate`` (named ``label``) on its subscribed days, beside ``real``."""
    real_plan = f"{active[-1][2].code} v{active[-1][2].version}" if active else None
    spans = subscribed_spans(active, start, end)
    if not spans:
        return ShadowBill(account, real, real_plan, label, None, "no subscription in the period")
    if candidate.currency != real.currency:
        note = f"the candidate is priced in {candidate.currency}, the account is billed in {real.currency}"
        return ShadowBill(account, real, real_plan, label, None, note)
    priced = _amounts(by_source, [(s, u, candidate) for s, u in spans], start, end, real.tax_rate, order)
    totals = invoice_totals([*priced, *real.adjustments], real.tax_rate, real.currency)
    return ShadowBill(account, real, real_plan, label, totals)
