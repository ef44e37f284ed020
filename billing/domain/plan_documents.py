"""A plan version as the catalog stores it (a JSON document) and back, and its digest.

Money and quantities are strings in the document, never floats; ``access``, ``limits``,
``caps``, ``threshold_invoice`` and ``prepaid`` appear only when the plan has them, so a plan
written before they existed keeps its document, digest and version (and a changed threshold is a
new version).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from billing.domain.access import (
    access_doc,
    access_from_doc,
    caps_doc,
    caps_from_doc,
    limits_doc,
    limits_from_doc,
    prepaid_doc,
    prepaid_from_doc,
)
from billing.domain.plans import PlanVersion, Price, Tier

__all__ = ["document_digest", "plan_document", "plan_from_document"]


def _dec(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


def plan_document(pv: PlanVersion) -> dict[str, Any]:
    """A plan version as stored (JSON; money and quantities as strings, never floats). ``access``,
    ``limits`` and ``caps`` are in it only when the plan has them, so a plan written before they
    existed keeps its document, digest and version."""
    doc: dict[str, Any] = {
        "code": pv.code,
        "name": pv.name,
        "currency": pv.currency,
        "base_fee": str(pv.base_fee),
        "minimum_commitment": str(pv.minimum_commitment),
        "prices": [
            {
                "meter": p.meter,
                "model": p.model,
                "unit": p.unit,
                "unit_price": _dec(p.unit_price),
                "tiers": [
                    {"up_to": _dec(t.up_to), "unit_price": str(t.unit_price), "flat_fee": str(t.flat_fee)}
                    for t in p.tiers
                ],
                "package_size": _dec(p.package_size),
                "package_price": _dec(p.package_price),
                "amount": _dec(p.amount),
                "included": str(p.included),
                "topics": list(p.topics),
            }
            for p in pv.prices
        ],
    }
    if pv.access is not None:
        doc["access"] = access_doc(pv.access)
    if pv.limits is not None:
        doc["limits"] = limits_doc(pv.limits)
    if pv.caps is not None:
        doc["caps"] = caps_doc(pv.caps)
    if pv.threshold_invoice is not None:
        doc["threshold_invoice"] = {"amount": str(pv.threshold_invoice)}
    if pv.prepaid is not None:
        doc["prepaid"] = prepaid_doc(pv.prepaid)
    return doc


def plan_from_document(version: int, doc: dict[str, Any]) -> PlanVersion:
    def d(v: str | None) -> Decimal | None:
        return None if v is None else Decimal(v)

    return PlanVersion(
        code=doc["code"],
        name=doc["name"],
        version=version,
        currency=doc["currency"],
        base_fee=Decimal(doc["base_fee"]),
        minimum_commitment=Decimal(doc["minimum_commitment"]),
        prices=tuple(
            Price(
                meter=p["meter"],
                model=p["model"],
                unit=p["unit"],
                unit_price=d(p["unit_price"]),
                tiers=tuple(Tier(d(t["up_to"]), Decimal(t["unit_price"]), Decimal(t["flat_fee"])) for t in p["tiers"]),
                package_size=d(p["package_size"]),
                package_price=d(p["package_price"]),
                amount=d(p["amount"]),
                included=Decimal(p["included"]),
                topics=tuple(p["topics"]),
            )
            for p in doc["prices"]
        ),
        access=None if "access" not in doc else access_from_doc(doc["access"]),
        limits=None if "limits" not in doc else limits_from_doc(doc["limits"]),
        caps=None if "caps" not in doc else caps_from_doc(doc["caps"]),
        threshold_invoice=None if "threshold_invoice" not in doc else Decimal(doc["threshold_invoice"]["amount"]),
        prepaid=None if "prepaid" not in doc else prepaid_from_doc(doc["prepaid"]),
    )


def document_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
