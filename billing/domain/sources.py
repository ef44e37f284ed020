"""Which source each quantity is billed from, in an order that is a setting (docs/billing.md, "Meters and sources").

Bytes and records come from ``proxy`` if the account has any proxy usage in the period, else from
``broker_metrics``; requests from ``audit_log``, else ``proxy``. Sources are never added together.
``STREAMTOLL_BILLING_SOURCES`` changes the order per quantity, e.g.
``bytes=broker_metrics,proxy;records=broker_metrics,proxy`` (quantities not named keep theirs).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_SOURCES", "QUANTITIES", "SOURCES", "format_sources", "parse_sources"]

QUANTITIES = ("bytes", "records", "requests")
SOURCES = ("proxy", "broker_metrics", "audit_log")

# quantity → sources in order of preference (the first the account has usage in wins)
DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "bytes": ("proxy", "broker_metrics"),
    "records": ("proxy", "broker_metrics"),
    "requests": ("audit_log", "proxy"),
}


def parse_sources(text: str) -> dict[str, tuple[str, ...]]:
    """``quantity=source,source;…`` → the full order (defaults for quantities not named).
    Raises ValueError with one sentence naming what is wrong."""
    order = dict(DEFAULT_SOURCES)
    named: set[str] = set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        quantity, eq, listed = part.partition("=")
        quantity = quantity.strip()
        if not eq:
            raise ValueError(f"{part!r} must look like quantity=source,source (e.g. bytes=proxy,broker_metrics)")
        if quantity not in QUANTITIES:
            raise ValueError(f"{quantity!r} is not a quantity; choose from {', '.join(QUANTITIES)}")
        if quantity in named:
            raise ValueError(f"{quantity} is named twice")
        sources = tuple(s.strip() for s in listed.split(",") if s.strip())
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a source; choose from {', '.join(SOURCES)}")
        if not sources:
            raise ValueError(f"{quantity} needs at least one source")
        if len(set(sources)) != len(sources):
            raise ValueError(f"{quantity} names a source twice")
        named.add(quantity)
        order[quantity] = sources
    return order


def format_sources(order: Mapping[str, tuple[str, ...]]) -> str:
    """The canonical text of an order (what ``parse_sources`` reads back)."""
    return ";".join(f"{q}={','.join(order[q])}" for q in QUANTITIES if q in order)
