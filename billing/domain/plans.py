"""Plans: a plan version, its prices and tiers, and the validation of a plan as declared in YAML.

Owns the frozen value objects :class:`PlanVersion`, :class:`Price`, :class:`Tier`, the price
models, and :func:`parse_plan`, which turns one plan entry of ``plans.yaml`` (already loaded into
plain Python) into a :class:`PlanVersion` or raises one :class:`PlanError` listing every problem,
each named by its path (``plans[0] (growth).prices[1].tiers[2].unit_price: …``).

It does not read files, compare with published versions or assign version numbers: that is the
catalog service's job. ``parse_plan`` returns ``version=1``; the service replaces it
(``dataclasses.replace``) when it publishes a changed plan as a new version.

Interpretations made here (docs/billing.md, "The plans file", says the same to whoever writes one):

* Money and quantities are strings or ints (``Decimal`` too, for callers building documents in
  code); a YAML float such as ``0.08`` is rejected with a message to quote it.
* Prices, fees and allowances are never negative; ``up_to`` and ``package_size`` are positive.
* Fixed amounts charged as they are (``base_fee``, ``minimum_commitment``, a flat price's
  ``amount``) may not be finer than the currency's minor unit; unit, tier and package prices may
  (``"0.004"`` per thousand requests).
* ``unit`` is required for every model but ``flat``, where it only serves to show the quantity.
  ``included`` means nothing to a flat price and is refused there.
* A meter has at most one price without ``topics`` (the one that "takes the rest"); two prices
  for the same meter with the same ``topics`` are refused, since the second could never take usage.
* ``topics`` are :func:`fnmatch.fnmatchcase` globs (case-sensitive, like Kafka topic names).
* ``access``, ``limits`` and ``caps`` (what the plan grants at the gateway) are optional and
  validated by :mod:`billing.domain.access`; a plan without them is unrestricted.
* ``threshold_invoice: {amount: "1000.00"}`` (optional; progressive billing,
  :mod:`billing.domain.progressive`): whenever the account's usage of the period not yet
  invoiced reaches ``amount`` (the usage lines' sum, before tax; the base fee, flat prices and
  the minimum commitment stay on the final invoice), an invoice is issued for it mid-period. The
  amount is positive and in whole minor units; it repeats (each further ``amount`` of
  un-invoiced usage issues another).
* ``prepaid`` (caps following the account's unit grants) is validated by
  :mod:`billing.domain.access` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, get_args

from billing.domain.access import Access, CapSpec, PrepaidSpec, parse_access, parse_caps, parse_limits, parse_prepaid
from billing.domain.money import minor_unit, round_money, to_decimal
from billing.domain.units import METERS, Meter, check_unit, is_meter
from billing.errors import PlanError
from metering.entitlements import Limits

__all__ = ["METERS", "MODELS", "Meter", "Model", "PlanVersion", "Price", "Tier", "parse_plan"]

Model = Literal["per_unit", "graduated", "volume", "package", "flat"]
MODELS: Final[tuple[Model, ...]] = get_args(Model)

_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Tier:
    """Quantities above the previous tier's ``up_to`` and up to this one (inclusive; ``None`` = no end)."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = _ZERO


@dataclass(frozen=True)
class Price:
    """How one meter (optionally narrowed to topic globs) is priced; fields unused by ``model`` stay empty."""

    meter: Meter
    model: Model
    unit: str | None
    unit_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    amount: Decimal | None = None
    included: Decimal = _ZERO
    topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanVersion:
    """One immutable version of a plan: currency, fixed fees per billing period, and prices in file order."""

    code: str
    name: str
    version: int
    currency: str
    base_fee: Decimal = _ZERO
    minimum_commitment: Decimal = _ZERO
    prices: tuple[Price, ...] = ()
    # what the plan grants at the gateway (billing.domain.access); None = the plan has no such section
    access: Access | None = None
    limits: Limits | None = None
    caps: tuple[CapSpec, ...] | None = None
    # progressive billing (billing.domain.progressive): None = invoiced at period end only
    threshold_invoice: Decimal | None = None
    prepaid: PrepaidSpec | None = None  # caps following the account's unit grants (access.prepaid_caps)


_PLAN_KEYS: Final = (
    "code",
    "name",
    "currency",
    "base_fee",
    "minimum_commitment",
    "prices",
    "access",
    "limits",
    "caps",
    "threshold_invoice",
    "prepaid",
)
_PRICE_KEYS: Final = (
    "meter",
    "model",
    "unit",
    "unit_price",
    "tiers",
    "package_size",
    "package_price",
    "amount",
    "included",
    "topics",
)
_TIER_KEYS: Final = ("up_to", "unit_price", "flat_fee")
_MODEL_FIELDS: Final[Mapping[Model, tuple[str, ...]]] = {
    "per_unit": ("unit_price",),
    "graduated": ("tiers",),
    "volume": ("tiers",),
    "package": ("package_size", "package_price"),
    "flat": ("amount",),
}
_ALL_MODEL_FIELDS: Final = ("unit_price", "tiers", "package_size", "package_price", "amount")

_Bound = Literal["non-negative", "positive"]


def parse_plan(doc: Mapping[str, Any], where: str) -> PlanVersion:
    """Validate one plan entry (as in ``samples/plans.yaml``) into version 1 of a :class:`PlanVersion`.

    ``where`` names the entry in messages (``"plans[0]"``). Raises :class:`PlanError` with every
    problem found, not just the first.
    """
    if not isinstance(doc, Mapping):
        raise PlanError([f"{where}: a plan must be a mapping, got {type(doc).__name__}"])
    problems: list[str] = []
    code = doc.get("code")
    if not isinstance(code, str) or not code.strip():
        problems.append(f"{where}.code: required, a non-empty string")
        code = ""
    else:
        where = f"{where} ({code})"
    _unknown_keys(doc, _PLAN_KEYS, where, problems)

    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: required, a non-empty string")
        name = ""

    currency = doc.get("currency")
    currency_ok = False
    if not isinstance(currency, str):
        problems.append(f"{where}.currency: required, an ISO 4217 code such as EUR")
        currency = ""
    else:
        try:
            minor_unit(currency)
            currency_ok = True
        except ValueError as e:
            problems.append(f"{where}.currency: {e}")

    fees: dict[str, Decimal] = {}
    for key in ("base_fee", "minimum_commitment"):
        if key in doc:
            value = _number(doc[key], f"{where}.{key}", "non-negative", problems)
            if value is not None and currency_ok:
                _whole_minor_units(value, currency, f"{where}.{key}", problems)
            fees[key] = _ZERO if value is None else value

    prices: list[Price] = []
    raw_prices = doc.get("prices", [])
    if not isinstance(raw_prices, list):
        problems.append(f"{where}.prices: must be a list of prices")
        raw_prices = []
    for i, raw in enumerate(raw_prices):
        price = _parse_price(raw, f"{where}.prices[{i}]", currency if currency_ok else None, problems)
        if price is not None:
            prices.append(price)
    if len(prices) == len(raw_prices):
        _check_overlaps(prices, where, problems)

    access = parse_access(doc["access"], f"{where}.access", problems) if "access" in doc else None
    limits = parse_limits(doc["limits"], f"{where}.limits", problems) if "limits" in doc else None
    caps = parse_caps(doc["caps"], f"{where}.caps", problems) if "caps" in doc else None
    threshold = None
    if "threshold_invoice" in doc:
        threshold = _parse_threshold(
            doc["threshold_invoice"], f"{where}.threshold_invoice", currency_ok, currency, problems
        )
    prepaid = parse_prepaid(doc["prepaid"], f"{where}.prepaid", problems) if "prepaid" in doc else None

    if problems:
        raise PlanError(problems)
    return PlanVersion(
        code=code,
        name=name,
        version=1,
        currency=currency,
        base_fee=fees.get("base_fee", _ZERO),
        minimum_commitment=fees.get("minimum_commitment", _ZERO),
        prices=tuple(prices),
        access=access,
        limits=limits,
        caps=caps,
        threshold_invoice=threshold,
        prepaid=prepaid,
    )


def _parse_threshold(raw: object, at: str, currency_ok: bool, currency: str, problems: list[str]) -> Decimal | None:
    if not isinstance(raw, Mapping) or "amount" not in raw:
        problems.append(f'{at}: must be a mapping with an amount, e.g. {{amount: "1000.00"}}')
        return None
    _unknown_keys(raw, ("amount",), at, problems)
    amount = _number(raw["amount"], f"{at}.amount", "positive", problems)
    if amount is not None and currency_ok:
        _whole_minor_units(amount, currency, f"{at}.amount", problems)
    return amount


def _parse_price(raw: object, at: str, currency: str | None, problems: list[str]) -> Price | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: a price must be a mapping, got {type(raw).__name__}")
        return None
    before = len(problems)
    _unknown_keys(raw, _PRICE_KEYS, at, problems)

    meter = raw.get("meter")
    if not is_meter(meter):
        problems.append(f"{at}.meter: {meter!r} is not a meter; expected one of {', '.join(METERS)}")
    model = raw.get("model")
    if model not in MODELS:
        problems.append(f"{at}.model: {model!r} is not a price model; expected one of {', '.join(MODELS)}")

    unit = raw.get("unit")
    if unit == 1 and not isinstance(unit, bool):
        unit = "1"  # YAML reads `unit: 1` as an int
    if unit is None:
        if model != "flat":
            problems.append(f"{at}.unit: required (GB, GiB, TB, TiB for bytes; 1, thousand, million for counts)")
    elif not isinstance(unit, str):
        problems.append(f"{at}.unit: must be a string such as GB or million")
        unit = None
    elif is_meter(meter):
        try:
            check_unit(meter, unit)
        except ValueError as e:
            problems.append(f"{at}.unit: {e}")

    if model in MODELS:
        needed = _MODEL_FIELDS[model]
        for key in needed:
            if key not in raw:
                problems.append(f"{at}.{key}: required by model {model}")
        for key in _ALL_MODEL_FIELDS:
            if key in raw and key not in needed:
                problems.append(f"{at}.{key}: not used by model {model}; remove it")
        if model == "flat" and "included" in raw:
            problems.append(f"{at}.included: a flat price is independent of quantity; remove it")

    unit_price = _optional_number(raw, "unit_price", at, "non-negative", problems)
    package_size = _optional_number(raw, "package_size", at, "positive", problems)
    package_price = _optional_number(raw, "package_price", at, "non-negative", problems)
    amount = _optional_number(raw, "amount", at, "non-negative", problems)
    if amount is not None and currency is not None:
        _whole_minor_units(amount, currency, f"{at}.amount", problems)
    included = _optional_number(raw, "included", at, "non-negative", problems)
    tiers = _parse_tiers(raw["tiers"], f"{at}.tiers", problems) if "tiers" in raw else ()
    topics = _parse_topics(raw["topics"], f"{at}.topics", problems) if "topics" in raw else ()

    if len(problems) > before or not is_meter(meter) or model not in MODELS:
        return None
    return Price(
        meter=meter,
        model=model,
        unit=unit,
        unit_price=unit_price,
        tiers=tiers,
        package_size=package_size,
        package_price=package_price,
        amount=amount,
        included=_ZERO if included is None else included,
        topics=topics,
    )


def _parse_tiers(raw: object, at: str, problems: list[str]) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{at}: must be a non-empty list of tiers, the last with up_to: null")
        return ()
    tiers: list[Tier] = []
    previous: Decimal | None = _ZERO
    last = len(raw) - 1
    for i, tier in enumerate(raw):
        here = f"{at}[{i}]"
        if not isinstance(tier, Mapping):
            problems.append(f"{here}: a tier must be a mapping with up_to and unit_price")
            previous = None
            continue
        _unknown_keys(tier, _TIER_KEYS, here, problems)
        up_to: Decimal | None = None
        if "up_to" not in tier:
            problems.append(f"{here}.up_to: required (null for the last, open tier)")
        elif tier["up_to"] is None:
            if i != last:
                problems.append(f"{here}.up_to: only the last tier is open (null); give this one a bound")
        else:
            up_to = _number(tier["up_to"], f"{here}.up_to", "positive", problems)
            if i == last:
                problems.append(f"{here}.up_to: the last tier must be open (up_to: null), got {tier['up_to']!r}")
            elif up_to is not None and previous is not None and up_to <= previous:
                problems.append(f"{here}.up_to: {up_to} must be greater than the previous tier's up_to ({previous})")
        previous = up_to
        if "unit_price" not in tier:
            problems.append(f"{here}.unit_price: required")
        unit_price = _optional_number(tier, "unit_price", here, "non-negative", problems)
        flat_fee = _optional_number(tier, "flat_fee", here, "non-negative", problems)
        if unit_price is not None:
            tiers.append(Tier(up_to=up_to, unit_price=unit_price, flat_fee=_ZERO if flat_fee is None else flat_fee))
    return tuple(tiers)


def _parse_topics(raw: object, at: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f'{at}: must be a non-empty list of topic globs, e.g. ["premium.*"]; omit it for all topics')
        return ()
    topics: list[str] = []
    for i, topic in enumerate(raw):
        if not isinstance(topic, str) or not topic:
            problems.append(f"{at}[{i}]: must be a non-empty string (a topic name or glob)")
        else:
            topics.append(topic)
    return tuple(topics)


def _check_overlaps(prices: list[Price], where: str, problems: list[str]) -> None:
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    for i, price in enumerate(prices):
        key = (price.meter, price.topics)
        if key in seen:
            what = f"topics {list(price.topics)}" if price.topics else "no topics (the price taking the rest)"
            problems.append(
                f"{where}.prices[{i}]: prices[{seen[key]}] already prices {price.meter} with {what}; "
                "this one would never take any usage"
            )
        else:
            seen[key] = i


def _unknown_keys(doc: Mapping[Any, Any], allowed: tuple[str, ...], at: str, problems: list[str]) -> None:
    for key in doc:
        if key not in allowed:
            problems.append(f"{at}.{key}: unknown field; expected one of {', '.join(allowed)}")


def _optional_number(doc: Mapping[Any, Any], key: str, at: str, bound: _Bound, problems: list[str]) -> Decimal | None:
    if key not in doc:
        return None
    return _number(doc[key], f"{at}.{key}", bound, problems)


def _number(value: object, at: str, bound: _Bound, problems: list[str]) -> Decimal | None:
    if isinstance(value, float):
        problems.append(f'{at}: {value!r} is a YAML float, which is inexact; quote it as a string: "{value!r}"')
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        problems.append(f'{at}: must be a decimal string such as "0.08" or an integer, got {value!r}')
        return None
    try:
        number = to_decimal(value)
    except ValueError as e:
        problems.append(f"{at}: {e}")
        return None
    if bound == "positive" and number <= 0:
        problems.append(f"{at}: must be greater than 0, got {number}")
        return None
    if number < 0:
        problems.append(f"{at}: must not be negative, got {number}")
        return None
    return number


def _whole_minor_units(value: Decimal, currency: str, at: str, problems: list[str]) -> None:
    if round_money(value, currency) != value:
        problems.append(f"{at}: {value} is finer than {currency}'s minor unit ({minor_unit(currency)} decimals)")
