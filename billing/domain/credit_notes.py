"""Credit notes: the rules, pure (no I/O).

A credit note credits part or all of a **finalized** invoice; the invoice itself never changes.

* **The cap.** The credit notes issued against one invoice never add up to more than its total:
  a new one may credit at most ``invoice total − credited so far`` (:func:`remaining_credit`).
* **The split (amount or full).** An amount is what the customer gets back, tax included. Its
  tax is the invoice's tax in proportion, rounded once in the invoice's currency:
  ``tax = round(amount × invoice tax / invoice total)``, and ``net = amount − tax`` (exact: both
  are in minor units). The credit note that brings the credited sum to the invoice's total takes
  exactly the tax not yet credited instead, so the credit notes of an invoice credited in full
  add up to its net and its tax to the cent (:func:`credit_for_amount`).
* **The split (chosen lines).** Each chosen line is credited a net amount (at most the line's
  own amount); ``net`` is their sum, ``tax = round(net × invoice tax rate)`` rounded once,
  ``total = net + tax``, and the cap applies to the total (:func:`credit_for_lines`).
* **Applying a credit to the next invoice.** A credit note settled as ``credit`` carries its
  net: the account's next billing run adds a negative line "Credit note CN-… applied" (oldest
  credit note first) for at most the invoice's subtotal before credits, so an invoice never goes
  below zero, and the rest is carried to the invoice after (:func:`apply_credits`). Tax is then
  computed on the reduced subtotal as always, so the credited tax comes back through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from billing.domain.invoicing import PricedLine
from billing.domain.money import exact_arithmetic, format_money, proportion, round_money
from billing.domain.rating import Line
from billing.errors import CreditNoteError

__all__ = [
    "REASONS",
    "SETTLEMENTS",
    "CreditAmounts",
    "OpenCredit",
    "apply_credits",
    "credit_for_amount",
    "credit_for_lines",
    "credit_line",
    "credit_note_number",
    "remaining_credit",
]

REASONS: Final = ("duplicate", "error", "goodwill", "order_change", "other")
SETTLEMENTS: Final = ("credit", "refunded")
_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class CreditAmounts:
    """A credit note's amounts: ``net + tax == total``, each in the invoice's minor units."""

    net: Decimal
    tax: Decimal
    total: Decimal


def credit_note_number(year: int, sequence: int) -> str:
    """``CN-2026-0001``: the credit notes' own sequence per year, four digits at least."""
    return f"CN-{year}-{sequence:04d}"


def remaining_credit(invoice_total: Decimal, credited: Decimal) -> Decimal:
    """What may still be credited against an invoice: its total minus the credit notes issued."""
    return max(_ZERO, invoice_total - credited)


def _in_minor_units(amount: Decimal, currency: str, what: str) -> Decimal:
    if not amount.is_finite() or amount <= 0:
        raise CreditNoteError(f"{what} must be a positive amount, got {amount}")
    if round_money(amount, currency) != amount:
        raise CreditNoteError(f"{what} {amount} has more digits than {currency} has minor units")
    return round_money(amount, currency)


def _capped(total: Decimal, remaining: Decimal, currency: str) -> None:
    if total > remaining:
        raise CreditNoteError(
            f"a credit note of {format_money(total, currency)} {currency} is more than the "
            f"{format_money(remaining, currency)} {currency} "
            "left to credit on this invoice (its total minus the credit notes already issued)"
        )


def credit_for_amount(
    amount: Decimal | None,
    invoice_total: Decimal,
    invoice_tax: Decimal,
    credited_total: Decimal,
    credited_tax: Decimal,
    currency: str,
) -> CreditAmounts:
    """The credit note for ``amount`` (tax included; None: everything left) against an invoice of
    ``invoice_total`` with ``invoice_tax``, of which ``credited_total`` (``credited_tax`` of it
    tax) is credited already. Refuses more than is left (:class:`CreditNoteError`)."""
    remaining = remaining_credit(invoice_total, credited_total)
    if remaining <= 0:
        raise CreditNoteError("nothing is left to credit on this invoice")
    gross = round_money(remaining, currency) if amount is None else _in_minor_units(amount, currency, "the amount")
    _capped(gross, remaining, currency)
    if gross == remaining:
        tax = round_money(invoice_tax - credited_tax, currency)
    else:
        tax = round_money(proportion(gross, invoice_tax, invoice_total), currency)
    with exact_arithmetic():
        return CreditAmounts(round_money(gross - tax, currency), round_money(tax, currency), gross)


def credit_for_lines(
    chosen: Mapping[int, Decimal],
    line_amounts: Mapping[int, Decimal],
    tax_rate: Decimal,
    invoice_total: Decimal,
    credited_total: Decimal,
    currency: str,
) -> CreditAmounts:
    """The credit note for net amounts on chosen lines (position → amount, each at most the
    line's own ``line_amounts[position]``); tax at the invoice's rate, rounded once."""
    if not chosen:
        raise CreditNoteError("choose at least one line to credit")
    for position, amount in sorted(chosen.items()):
        if position not in line_amounts:
            raise CreditNoteError(f"the invoice has no line {position}")
        _in_minor_units(amount, currency, f"the amount of line {position}")
        if amount > line_amounts[position]:
            raise CreditNoteError(
                f"line {position} is {format_money(line_amounts[position], currency)} {currency}: "
                f"it cannot be credited {format_money(amount, currency)}"
            )
    with exact_arithmetic():
        net = round_money(sum(chosen.values(), _ZERO), currency)
        tax = round_money(net * tax_rate, currency)
        total = net + tax
    _capped(total, remaining_credit(invoice_total, credited_total), currency)
    return CreditAmounts(net, tax, total)


@dataclass(frozen=True)
class OpenCredit:
    """A credit note settled as credit, with the net not yet applied to an invoice."""

    number: str
    remaining: Decimal


def apply_credits(subtotal: Decimal, credits: Sequence[OpenCredit]) -> list[tuple[str, Decimal]]:
    """(credit note number, amount applied) for an invoice whose subtotal before credits is
    ``subtotal``: oldest credit first (``credits`` in issue order), never below zero; what is not
    applied stays open for the next invoice."""
    room = max(_ZERO, subtotal)
    applied: list[tuple[str, Decimal]] = []
    for credit in credits:
        if room <= 0:
            break
        take = min(credit.remaining, room)
        if take > 0:
            applied.append((credit.number, take))
            room -= take
    return applied


def credit_line(number: str, amount: Decimal) -> PricedLine:
    """The negative line applying ``amount`` of credit note ``number`` to an invoice."""
    line = Line("credit_note", f"Credit note {number} applied", -amount, -amount)
    return PricedLine(line, None, {"credit_note": number})
