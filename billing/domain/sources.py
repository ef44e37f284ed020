"""Which source each quantity is billed from, in an order that is a setting (docs/billing.md, "Meters and sources").

Bytes and records come from ``proxy`` if the account has any proxy usage in the period, else from
``broker_metrics``; requests from ``audit_log``, else ``proxy``. Sources are never added together.
``STREAMTOLL_BILLING_SOURCES`` changes the order per quantity, e.g.
``bytes=broker_metrics,proxy;records=broker_metrics,proxy`` (quantities not named keep theirs).

The choice itself is written once, here: :func:`pick_source` (the first source of a preference
that has usage) and :func:`meter_usage` (an account's metered usage, one source per quantity),
used by billing runs, previews and statements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from billing.domain.usage import MeterUsage

__all__ = [
    "DEFAULT_SOURCES",
    "QUANTITIES",
    "SOURCES",
    "format_sources",
    "meter_usage",
    "parse_sources",
    "pick_source",
]

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


def pick_source(preference: Iterable[str], has_usage: Callable[[str], bool]) -> str | None:
    """The first source of ``preference`` that ``has_usage`` says the account has usage in
    (None: none has). Sources are never added together."""
    for source in preference:
        if has_usage(source):
            return source
    return None


def meter_usage(
    by_source: Mapping[str, MeterUsage], order: Mapping[str, tuple[str, ...]]
) -> tuple[MeterUsage, dict[str, str]]:
    """One account's usage by (meter, topic, day) with one source per quantity (``order``:
    quantity → preference), and the source chosen per quantity (quantities without usage are
    left out)."""
    chosen: dict[str, str] = {}
    usage: MeterUsage = {}
    for quantity, preference in order.items():

        def part(source: str, quantity: str = quantity) -> MeterUsage:
            return {k: v for k, v in by_source.get(source, {}).items() if k[0].endswith("_" + quantity)}

        source = pick_source(preference, lambda s: bool(part(s)))
        if source is not None:
            chosen[quantity] = source
            usage.update(part(source))
    return usage, chosen
