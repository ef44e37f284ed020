"""Threshold invoices (progressive billing): the rules, pure (no I/O).

A plan may set ``threshold_invoice: {amount: A}`` (:attr:`billing.domain.plans.PlanVersion.threshold_invoice`).
It protects a provider from a tenant that streams a month's budget in a day: the period is
invoiced in parts as the usage grows, and its final invoice deducts what the parts invoiced.

* **What counts.** Only the usage lines (kind ``usage``: what a meter's price made of the usage),
  rated on the period's usage *so far* exactly as the final invoice rates the whole period (tiers
  on the month-to-date total: a graduated price crossing a tier mid-month is priced as at month
  end). The base fee, flat prices and the minimum commitment top-up stay on the final invoice:
  they are fixed, known in full only at period end (prorated by the days subscribed; the top-up
  depends on the whole period's usage) and are not what runs away. Late-usage adjustments and
  credit notes also stay on the final invoice.
* **When.** Compared before tax: a threshold invoice is due when the usage lines' subtotal so far
  minus the subtotals of the period's threshold invoices already issued (finalized, not void)
  reaches ``A``. It repeats: each further ``A`` of un-invoiced usage issues another. A void
  threshold invoice is not deducted, so its usage is invoiced again by the next one or the final.
* **The lines.** A threshold invoice lists the usage lines so far, then one negative line
  "Invoiced on threshold INV-…" (kind ``threshold``) per earlier threshold invoice of the period
  for its subtotal: its subtotal is the usage not yet invoiced. Tax is the account's rate on its
  own subtotal, rounded once (``invoice_totals``), as on every invoice.
* **The final invoice** (the billing run) is the whole period as always, then the same
  deduction lines for every threshold invoice of the period (before credit notes are applied, so
  a credit never takes it below zero).
* **Exactness.** The subtotals add up exactly: final + threshold invoices = the subtotal a single
  invoice would have had (``Σ deductions`` cancels ``Σ threshold subtotals``), whatever usage
  came late. Tax is rounded once per invoice, so with ``k`` invoices in the period the taxes may
  add up to at most ``⌊(k+1)/2⌋`` minor units away from a single invoice's tax (each rounding is
  within half a minor unit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from billing.domain.invoicing import PricedLine
from billing.domain.rating import Line, invoice_totals

__all__ = ["ThresholdInvoiced", "deduction_lines", "threshold_due", "uninvoiced", "usage_lines"]

_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class ThresholdInvoiced:
    """A finalized threshold invoice of the period: its number and its subtotal (before tax)."""

    number: str
    subtotal: Decimal


def usage_lines(lines: Iterable[PricedLine]) -> list[PricedLine]:
    """The lines a threshold invoice takes: usage only (no base fee, flat price or minimum top-up)."""
    return [p for p in lines if p.line.kind == "usage"]


def uninvoiced(lines: Iterable[PricedLine], invoiced: Sequence[ThresholdInvoiced], currency: str) -> Decimal:
    """The usage lines' subtotal so far minus what the period's threshold invoices invoiced."""
    so_far = invoice_totals((p.line.rounded_amount for p in usage_lines(lines)), _ZERO, currency).subtotal
    return so_far - sum((t.subtotal for t in invoiced), _ZERO)


def deduction_lines(invoiced: Sequence[ThresholdInvoiced]) -> list[PricedLine]:
    """One negative line per threshold invoice, "Invoiced on threshold INV-…", for its subtotal."""
    return [
        PricedLine(
            Line("threshold", f"Invoiced on threshold {t.number}", -t.subtotal, -t.subtotal),
            None,
            {"threshold_invoice": t.number},
        )
        for t in invoiced
    ]


def threshold_due(
    amount: Decimal | None, lines: Sequence[PricedLine], invoiced: Sequence[ThresholdInvoiced], currency: str
) -> list[PricedLine]:
    """The lines of the threshold invoice due now, or ``[]`` when none is: ``lines`` are the
    period's rated lines so far (``rate_account``), ``invoiced`` its threshold invoices already
    issued, ``amount`` the plan's threshold (None: the plan has none)."""
    if amount is None or uninvoiced(lines, invoiced, currency) < amount:
        return []
    return usage_lines(lines) + deduction_lines(invoiced)
