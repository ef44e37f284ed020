"""What an invoice document shows, computed from the frozen snapshot: every number already
formatted, so templates do no arithmetic and a document always matches the stored invoice.

Pure: the snapshot (a dict as stored at finalize) and the issuer in, a view dict out.
Numbers are written by :func:`~billing.domain.money.format_money` and
:func:`~billing.domain.money.format_quantity`: with thousands separators in documents a person
reads (:func:`invoice_view_model`, :func:`statement_view_model`), without them in
:func:`invoice_snapshot_view` (the API's JSON). Snapshots frozen before amounts were written
that way (``"2.1E+2"``, ``"99"``, ``"0"``) are shown the same way at read time; the stored
snapshot is never changed.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from billing.domain.money import format_money, format_quantity

__all__ = [
    "credit_note_view_model",
    "invoice_snapshot_view",
    "invoice_view_model",
    "money_text",
    "quantity_text",
    "statement_view_model",
]

_UNIT_LABELS = {
    "GB": "GB",
    "GiB": "GiB",
    "TB": "TB",
    "TiB": "TiB",
    "1": "",
    "thousand": "thousand",
    "million": "million",
}
_KIND_LABELS = {"base_fee": "Base fee", "minimum_topup": "Minimum commitment top-up", "flat": "Flat fee"}


def money_text(amount: str | Decimal, currency: str) -> str:
    """``1234.5`` EUR → ``1,234.50``: :func:`~billing.domain.money.format_money` with thousands
    separated (an unrounded amount keeps its digits: ``0.0425`` → ``0.0425``)."""
    return format_money(amount, currency, thousands=True)


def quantity_text(quantity: str | Decimal | None) -> str:
    """``1.25E+3`` → ``1,250``, ``931.322574615`` → ``931.322574615`` (every digit, never rounded)."""
    return "" if quantity is None else format_quantity(quantity, thousands=True)


def _breakdown(line: dict[str, Any], currency: str) -> list[str]:
    out = []
    for part in line.get("breakdown") or []:
        qty = quantity_text(part["quantity"])
        text = f"tier {part['tier'] + 1}: {qty} × {money_text(part['unit_price'], currency)}"
        if Decimal(part.get("flat_fee", "0")) != 0:
            text += f" + {money_text(part['flat_fee'], currency)}"
        out.append(f"{text} = {money_text(part['amount'], currency)}")
    return out


_PART_MONEY = ("unit_price", "flat_fee", "amount")


def _plain_part(part: dict[str, Any], currency: str) -> dict[str, Any]:
    out = dict(part)
    if part.get("quantity") is not None:
        out["quantity"] = format_quantity(part["quantity"])
    for key in _PART_MONEY:
        if part.get(key) is not None:
            out[key] = format_money(part[key], currency)
    return out


def _plain_line(line: dict[str, Any], currency: str) -> dict[str, Any]:
    out = dict(line)
    if line.get("quantity") is not None:
        out["quantity"] = format_quantity(line["quantity"])
    for key in ("amount_unrounded", "amount"):
        if line.get(key) is not None:
            out[key] = format_money(line[key], currency)
    out["breakdown"] = [_plain_part(part, currency) for part in line.get("breakdown") or []]
    return out


def invoice_snapshot_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot (or a draft's view of the same shape) with every number as plain text: amounts,
    unrounded amounts and unit prices by :func:`~billing.domain.money.format_money` in the
    invoice's currency (``"210.00"``, ``"0.0425"``), quantities and the tax rate by
    :func:`~billing.domain.money.format_quantity`. Idempotent, so it is applied to every
    snapshot, whenever it was frozen; keys it does not know are passed through."""
    currency = snapshot["currency"]
    out = dict(snapshot)
    out["lines"] = [_plain_line(line, currency) for line in snapshot.get("lines") or []]
    for key in ("subtotal", "tax", "total"):
        if snapshot.get(key) is not None:
            out[key] = format_money(snapshot[key], currency)
    if snapshot.get("tax_rate") is not None:
        out["tax_rate"] = format_quantity(snapshot["tax_rate"])
    return out


def _describe(line: dict[str, Any]) -> str:
    if line["kind"] in _KIND_LABELS and not line.get("description"):
        return _KIND_LABELS[line["kind"]]
    text = str(line.get("description") or line["kind"])
    topics = line.get("topics") or []
    if topics and "topics" not in text:
        text += f" (topics {', '.join(topics)})"
    return text


def invoice_view_model(snapshot: dict[str, Any], issuer: dict[str, Any], status: str = "finalized") -> dict[str, Any]:
    currency = snapshot["currency"]
    period_start = date.fromisoformat(snapshot["period"]["start"])
    period_end = date.fromisoformat(snapshot["period"]["end"])
    lines = []
    for line in snapshot["lines"]:
        unit = line.get("unit")
        lines.append(
            {
                "description": _describe(line),
                "quantity": quantity_text(line.get("quantity")),
                "unit": _UNIT_LABELS.get(unit, unit) if unit else "",
                "amount": money_text(line["amount"], currency),
                "breakdown": _breakdown(line, currency),
                "is_adjustment": line["kind"] == "adjustment",
                "source": line.get("source") or "",
            }
        )
    percent = Decimal(snapshot["tax_rate"]).scaleb(2)  # a rate of 0.19 reads 19 %: exact, no rounding
    return {
        "issuer": issuer,
        "number": snapshot["number"],
        "status": status,
        "account": snapshot["account"],
        "issued_on": snapshot["issued_on"],
        "due_on": snapshot["due_on"],
        # the stored period is half-open; a person reads the last day it includes
        "period": f"{period_start.isoformat()} – {(period_end - timedelta(days=1)).isoformat()}",
        "period_label": period_start.strftime("%B %Y"),
        "plan": snapshot.get("plan") or {},
        "currency": currency,
        "lines": lines,
        "subtotal": money_text(snapshot["subtotal"], currency),
        "tax_rate": f"{format_quantity(percent)} %",
        "tax": money_text(snapshot["tax"], currency),
        "total": money_text(snapshot["total"], currency),
        "payment_terms": f"Payable within {snapshot['payment_terms_days']} days, by {snapshot['due_on']}.",
    }


_REASON_LABELS = {
    "duplicate": "Duplicate invoice",
    "error": "Error on the invoice",
    "goodwill": "Goodwill",
    "order_change": "Order change",
    "other": "Other",
}
_SETTLEMENT_TEXT = {
    "credit": "This amount is credited to your next invoice.",
    "refunded": "This amount is refunded to you.",
}


def credit_note_view_model(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A credit note's frozen snapshot (``billing.services.credit_notes``) formatted for its template."""
    currency = snapshot["currency"]
    reason = _REASON_LABELS[snapshot["reason"]]
    if snapshot.get("reason_text"):
        reason += f": {snapshot['reason_text']}"
    percent = Decimal(snapshot["tax_rate"]).scaleb(2)
    return {
        "issuer": snapshot["issuer"],
        "number": snapshot["number"],
        "account": snapshot["account"],
        "issued_on": snapshot["issued_on"],
        "invoice": snapshot["invoice"],
        "currency": currency,
        "reason": reason,
        "lines": [
            {"description": line["description"], "amount": money_text(line["amount"], currency)}
            for line in snapshot["lines"]
        ],
        "net": money_text(snapshot["net"], currency),
        "tax_rate": f"{format_quantity(percent)} %",
        "tax": money_text(snapshot["tax"], currency),
        "total": money_text(snapshot["total"], currency),
        "settlement": _SETTLEMENT_TEXT[snapshot["settlement"]],
    }


def statement_view_model(doc: dict[str, Any]) -> dict[str, Any]:
    """A statement (``billing.services.statements.statement``) formatted for its template."""
    currency = doc["currency"]
    quantities = ("bytes", "records", "requests", "denied_requests")

    def section(title: str, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
        return {
            "title": title,
            "headers": [k.replace("_", " ") for k in keys + quantities],
            "key_count": len(keys),
            "rows": [[str(r[k]) for k in keys] + [quantity_text(r[q]) for q in quantities] for r in rows],
        }

    return {
        "account": doc["account"],
        "period": doc["period"],
        "window": f"{doc['from']} – {doc['to']}",
        "currency": currency,
        "rated": {
            "lines": [
                {"description": line["description"], "amount": money_text(line["amount"], currency)}
                for line in doc["rated_so_far"]["lines"]
            ],
            "subtotal": money_text(doc["rated_so_far"]["subtotal"], currency),
            "tax": money_text(doc["rated_so_far"]["tax"], currency),
            "total": money_text(doc["rated_so_far"]["total"], currency),
        },
        "sections": [
            section("Totals by source", doc["totals"], ("source", "direction")),
            section("By day", doc["daily"], ("day", "source", "direction")),
            section("By topic", doc["by_topic"], ("topic", "source", "direction")),
            section("By client id", doc["by_client_id"], ("client_id", "source", "direction")),
            section("By principal", doc["by_principal"], ("principal", "source", "direction")),
        ],
        "differences": [
            {
                "direction": d["direction"],
                "proxy": quantity_text(d["proxy_bytes"]),
                "broker": quantity_text(d["broker_metrics_bytes"]),
                "difference": quantity_text(d["difference_bytes"]),
            }
            for d in doc["source_differences"]
        ],
        "episodes": [episode_row(e) for e in doc.get("throttles_and_blocks", [])],
    }


def _instant_text(iso: str) -> str:
    """``2026-12-07T12:00:03.250Z`` → ``2026-12-07 12:00:03 UTC``."""
    return iso[:10] + " " + iso[11:19] + " UTC"


def duration_text(seconds: float) -> str:
    """``4.2 s``, ``12 min 05 s``, ``3 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def episode_row(e: dict[str, Any]) -> dict[str, str]:
    """A throttle or block (``billing.services.episodes.episode_doc``) as the statement prints it."""
    what = f"{e['kind']} {e['direction']}"
    if e["cause"] == "quota" and e.get("limit_per_second") is not None:
        what += f" (plan rate {quantity_text(str(e['limit_per_second']))}/s)"
    elif e.get("meter"):
        what += f" (monthly cap {e['meter']})"
    return {
        "started": _instant_text(e["started_at"]),
        "ended": "still in force" if e["ended_at"] is None else _instant_text(e["ended_at"]),
        "duration": duration_text(e["duration_seconds"]),
        "what": what,
        "reason": e["reason"],
        "held": duration_text(e["held_seconds"]),
        "requests": quantity_text(str(e["requests"])),
    }
