"""Meters and priced units: what each meter counts and how a raw count becomes a priced quantity.

Owns the six meters (two count bytes, four count records or requests), the units a price may be
quoted in — bytes per ``GB`` (10^9), ``GiB`` (2^30), ``TB`` (10^12), ``TiB`` (2^40); records and
requests per ``1``, ``thousand``, ``million`` — and :func:`to_unit`, which divides a raw integer
count by the unit's size exactly (a power of two or ten always has a finite decimal quotient, so
nothing is rounded).
"""

from __future__ import annotations

from decimal import Decimal
from types import MappingProxyType
from typing import Final, Literal, TypeGuard, get_args

from billing.domain.money import exact_arithmetic

__all__ = [
    "BYTE_UNITS",
    "COUNT_UNITS",
    "METERS",
    "Measure",
    "Meter",
    "check_unit",
    "is_meter",
    "measure_of",
    "to_unit",
    "unit_size",
]

Meter = Literal[
    "produce_bytes",
    "consume_bytes",
    "produce_records",
    "consume_records",
    "produce_requests",
    "consume_requests",
]
METERS: Final[tuple[Meter, ...]] = get_args(Meter)

Measure = Literal["bytes", "count"]

BYTE_UNITS: Final = MappingProxyType({"GB": 10**9, "GiB": 2**30, "TB": 10**12, "TiB": 2**40})
COUNT_UNITS: Final = MappingProxyType({"1": 1, "thousand": 10**3, "million": 10**6})


def is_meter(value: object) -> TypeGuard[Meter]:
    """Whether ``value`` names one of the six meters."""
    return isinstance(value, str) and value in METERS


def measure_of(meter: str) -> Measure:
    """``"bytes"`` for the two bytes meters, ``"count"`` for records and requests meters."""
    if not is_meter(meter):
        raise ValueError(f"unknown meter {meter!r}: expected one of {', '.join(METERS)}")
    return "bytes" if meter.endswith("_bytes") else "count"


def unit_size(unit: str) -> int:
    """How many raw bytes or counts one ``unit`` is (``GiB`` → 1073741824)."""
    size = BYTE_UNITS.get(unit) or COUNT_UNITS.get(unit)
    if size is None:
        raise ValueError(f"unknown unit {unit!r}: expected one of {', '.join([*BYTE_UNITS, *COUNT_UNITS])}")
    return size


def check_unit(meter: str, unit: str) -> None:
    """``ValueError`` unless ``unit`` fits ``meter``: a bytes unit for bytes, a count unit for the rest."""
    units = BYTE_UNITS if measure_of(meter) == "bytes" else COUNT_UNITS
    if unit not in units:
        unit_size(unit)  # an unknown unit gets its own message
        raise ValueError(f"unit {unit!r} does not fit meter {meter!r}: use one of {', '.join(units)}")


def to_unit(raw: int, meter: str, unit: str) -> Decimal:
    """A meter's raw integer count expressed in ``unit``, exactly (1_500_000_000 bytes in GB → 1.5)."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise TypeError(f"a raw quantity is an int, got {type(raw).__name__}")
    if raw < 0:
        raise ValueError(f"a raw quantity cannot be negative, got {raw}")
    check_unit(meter, unit)
    with exact_arithmetic():
        return Decimal(raw) / unit_size(unit)
