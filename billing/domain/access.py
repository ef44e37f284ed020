"""What a plan (and an account) grants at the gateway: topic and group access, rate limits and
monthly caps, as written in ``plans.yaml`` / ``accounts.yaml`` — validated here into the neutral
records of :mod:`metering.entitlements`, and combined into an account's :class:`Entitlement`.

The YAML (docs/billing.md, "Limits and access" in the README)::

    access:
      topics:
        - {prefix: "orders."}                       # read and write (the default)
        - {name: prices, operations: [read]}
        - {glob: "events-*-v2", operations: [read]}
      groups:
        - {prefix: "acme-"}                         # groups have no operations
    limits:
      produce_bytes_per_second: 1048576
      consume_bytes_per_second: 4194304
      requests_per_second: 200
    caps:
      - {meter: produce_bytes, included: 50, unit: GB, policy: throttle, floor_bytes_per_second: 65536}
      - {meter: consume_bytes, included: 500, unit: GB, policy: soft}
      - {meter: produce_records, included: 10, unit: million, policy: block, block_fetch: true}
    prepaid: {policy: throttle, floor_bytes_per_second: 65536}   # or {policy: block}

Decisions made here:

* Each section is optional. No ``access`` (or an ``access`` without ``topics``/``groups``) leaves
  that kind unrestricted, as before access existed; ``topics: []`` allows no topic at all.
* An account's ``access`` adds to its plan's grants. It only matters where the plan restricts:
  extras on top of "everything" are still everything. An account without a plan in force has no
  plan to restrict it: unrestricted, no limits, no caps.
* ``included`` is in base units (bytes, records, requests) unless ``unit`` names one of the
  catalog's units (``GB`` = 10^9 bytes, ``GiB`` = 2^30, ``TB``, ``TiB``; ``thousand``,
  ``million`` for counts); it is stored in base units and must come to a whole number.
* ``floor_bytes_per_second`` belongs to ``throttle`` only (and is required there);
  ``block_fetch`` to ``block`` on a produce meter only (blocking a consume meter refuses fetch
  already). At most one cap per meter.
* Rates and floors are positive integers; YAML floats and strings are refused.
* ``prepaid`` (:class:`PrepaidSpec`): caps that follow the account's unit grants
  (:mod:`billing.domain.grants`). Each meter the account holds unit grants of is capped at what
  those grants had left at the start of the month (:func:`prepaid_caps`), with the prepaid
  policy: ``block`` or ``throttle`` (a floor required, as for a cap); ``soft`` is refused (it
  would change nothing at the gateway). Where the plan caps the same meter too, the cap with the
  smaller included volume wins (the plan's on a tie). Money grants make no cap: money has no
  unit the gateway counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, cast

from billing.domain.units import check_unit, unit_size
from metering.entitlements import CAP_METERS, POLICIES, Cap, Entitlement, Grant, Limits

__all__ = [
    "Access",
    "CapSpec",
    "PrepaidSpec",
    "access_doc",
    "access_from_doc",
    "caps_doc",
    "caps_from_doc",
    "entitlement_for",
    "limits_doc",
    "limits_from_doc",
    "parse_access",
    "parse_caps",
    "parse_limits",
    "parse_prepaid",
    "prepaid_caps",
    "prepaid_doc",
    "prepaid_from_doc",
]

_MATCH_KEYS: Final = {"name": "literal", "prefix": "prefix", "glob": "glob"}
_OPERATIONS: Final = ("read", "write")
_LIMIT_KEYS: Final = ("produce_bytes_per_second", "consume_bytes_per_second", "requests_per_second")
_CAP_KEYS: Final = ("meter", "included", "unit", "policy", "floor_bytes_per_second", "block_fetch")
_PREPAID_KEYS: Final = ("policy", "floor_bytes_per_second")
_PREPAID_POLICIES: Final = ("throttle", "block")


@dataclass(frozen=True)
class Access:
    """Grants of a plan or an account; ``None`` = that kind is not restricted here."""

    topics: tuple[Grant, ...] | None = None
    groups: tuple[Grant, ...] | None = None


@dataclass(frozen=True)
class CapSpec:
    """A cap as written (``unit`` only to show ``included`` as the plan does) over its
    :class:`~metering.entitlements.Cap` in base units."""

    cap: Cap
    unit: str | None = None


@dataclass(frozen=True)
class PrepaidSpec:
    """What the gateway does when a prepaid account's unit grants run out on a meter."""

    policy: Literal["throttle", "block"]
    floor_bytes_per_second: int | None = None


# --- validation -------------------------------------------------------------------------------


def _unknown(doc: Mapping[Any, Any], allowed: Sequence[str], at: str, problems: list[str]) -> None:
    for key in doc:
        if key not in allowed:
            problems.append(f"{at}.{key}: unknown field; expected one of {', '.join(allowed)}")


def _grant(raw: object, at: str, kind: Literal["topics", "groups"], problems: list[str]) -> Grant | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: must be a mapping with one of name, prefix or glob, e.g. {{prefix: orders.}}")
        return None
    allowed = (*_MATCH_KEYS, "operations") if kind == "topics" else tuple(_MATCH_KEYS)
    if kind == "groups" and "operations" in raw:
        problems.append(f"{at}.operations: a group grant has no operations (it lets a consumer use the group)")
    _unknown(raw, (*allowed, "operations") if kind == "groups" else allowed, at, problems)
    given = [k for k in _MATCH_KEYS if k in raw]
    if len(given) != 1:
        problems.append(f"{at}: give exactly one of name, prefix or glob, got {len(given) or 'none'}")
        return None
    pattern = raw[given[0]]
    if not isinstance(pattern, str) or not pattern:
        problems.append(f"{at}.{given[0]}: must be a non-empty string")
        return None
    operations = frozenset(_OPERATIONS)
    if kind == "topics" and "operations" in raw:
        ops = raw["operations"]
        if not isinstance(ops, list) or not ops or any(o not in _OPERATIONS for o in ops) or len(set(ops)) != len(ops):
            problems.append(f"{at}.operations: must be a non-empty list of read and/or write, each once, got {ops!r}")
            return None
        operations = frozenset(ops)
    match = cast(Literal["literal", "prefix", "glob"], _MATCH_KEYS[given[0]])
    return Grant(pattern, match, operations)


def _grants(raw: object, at: str, kind: Literal["topics", "groups"], problems: list[str]) -> tuple[Grant, ...]:
    if not isinstance(raw, list):
        problems.append(f"{at}: must be a list of grants such as {{prefix: orders.}} ([] grants none)")
        return ()
    out = [_grant(g, f"{at}[{i}]", kind, problems) for i, g in enumerate(raw)]
    return tuple(g for g in out if g is not None)


def parse_access(raw: object, at: str, problems: list[str]) -> Access | None:
    """An ``access`` section; problems are appended (each one sentence naming where)."""
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: must be a mapping with topics and/or groups")
        return None
    before = len(problems)
    _unknown(raw, ("topics", "groups"), at, problems)
    topics = _grants(raw["topics"], f"{at}.topics", "topics", problems) if "topics" in raw else None
    groups = _grants(raw["groups"], f"{at}.groups", "groups", problems) if "groups" in raw else None
    return None if len(problems) > before else Access(topics, groups)


def _positive_int(value: object, at: str, problems: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{at}: must be a positive integer, got {value!r}")
        return None
    if value <= 0:
        problems.append(f"{at}: must be greater than 0, got {value}")
        return None
    return value


def parse_limits(raw: object, at: str, problems: list[str]) -> Limits | None:
    """A ``limits`` section: per-second rates, each a positive integer."""
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: must be a mapping of {', '.join(_LIMIT_KEYS)}")
        return None
    before = len(problems)
    _unknown(raw, _LIMIT_KEYS, at, problems)
    values = {k: _positive_int(raw[k], f"{at}.{k}", problems) for k in _LIMIT_KEYS if k in raw}
    return None if len(problems) > before else Limits(**values)


def _included(raw: object, unit: str | None, at: str, problems: list[str]) -> int | None:
    if isinstance(raw, float):
        problems.append(f'{at}: {raw!r} is a YAML float, which is inexact; quote it as a string: "{raw!r}"')
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        problems.append(f"{at}: must be a whole number (or a decimal string with a unit), got {raw!r}")
        return None
    try:
        number = Decimal(str(raw).strip())
    except InvalidOperation:
        problems.append(f"{at}: {raw!r} is not a number")
        return None
    if not number.is_finite() or number < 0:
        problems.append(f"{at}: must be a number of 0 or more, got {raw!r}")
        return None
    base = number * (unit_size(unit) if unit is not None else 1)
    if base != base.to_integral_value():
        what = f"{raw} {unit}" if unit else str(raw)
        problems.append(f"{at}: {what} is not a whole number of base units (bytes, records or requests)")
        return None
    return int(base)


def _floor(raw: Mapping[Any, Any], policy: object, at: str, what: str, problems: list[str]) -> int | None:
    """A throttle's ``floor_bytes_per_second`` (required by it, refused elsewhere; ``what``: the
    cap's or the prepaid policy's, as the message names it)."""
    if "floor_bytes_per_second" in raw:
        if policy != "throttle":
            problems.append(f"{at}.floor_bytes_per_second: only a throttle {what} has a floor; remove it")
            return None
        return _positive_int(raw["floor_bytes_per_second"], f"{at}.floor_bytes_per_second", problems)
    if policy == "throttle":
        problems.append(f"{at}.floor_bytes_per_second: required by policy throttle (the rate it holds the account to)")
    return None


def _cap(raw: object, at: str, problems: list[str]) -> CapSpec | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: must be a mapping with meter, included and policy")
        return None
    before = len(problems)
    _unknown(raw, _CAP_KEYS, at, problems)
    meter = raw.get("meter")
    if meter not in CAP_METERS:
        problems.append(f"{at}.meter: {meter!r} is not a meter; expected one of {', '.join(CAP_METERS)}")
    unit = raw.get("unit")
    if unit == 1 and not isinstance(unit, bool):
        unit = "1"  # YAML reads `unit: 1` as an int
    if unit is not None:
        if not isinstance(unit, str):
            problems.append(f"{at}.unit: must be a string such as GB or million")
            unit = None
        elif meter in CAP_METERS:
            try:
                check_unit(str(meter), unit)
            except ValueError as e:
                problems.append(f"{at}.unit: {e}")
                unit = None
        else:
            unit = None
    included = None
    if "included" not in raw:
        problems.append(f"{at}.included: required (the monthly volume before the policy applies)")
    elif len(problems) == before:
        included = _included(raw["included"], unit, f"{at}.included", problems)
    policy = raw.get("policy")
    if policy not in POLICIES:
        problems.append(f"{at}.policy: {policy!r} is not a policy; expected one of {', '.join(POLICIES)}")
    floor = _floor(raw, policy, at, "cap", problems)
    block_fetch = raw.get("block_fetch", False)
    if not isinstance(block_fetch, bool):
        problems.append(f"{at}.block_fetch: must be true or false, got {block_fetch!r}")
    elif block_fetch and (policy != "block" or not str(meter).startswith("produce_")):
        problems.append(
            f"{at}.block_fetch: only a block cap on a produce meter can also refuse fetch "
            "(a consume meter's block refuses fetch already); remove it"
        )
    if len(problems) > before or included is None:
        return None
    cap = Cap(str(meter), included, cast(Literal["soft", "throttle", "block"], policy), floor, bool(block_fetch))
    return CapSpec(cap, unit)


def parse_caps(raw: object, at: str, problems: list[str]) -> tuple[CapSpec, ...] | None:
    """A ``caps`` section: at most one cap per meter."""
    if not isinstance(raw, list):
        problems.append(f"{at}: must be a list of caps such as {{meter: produce_bytes, included: 50, unit: GB, ...}}")
        return None
    before = len(problems)
    caps: list[CapSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        spec = _cap(entry, f"{at}[{i}]", problems)
        if spec is None:
            continue
        if spec.cap.meter in seen:
            problems.append(f"{at}[{i}]: {at}[{seen[spec.cap.meter]}] already caps {spec.cap.meter}; one cap per meter")
        seen.setdefault(spec.cap.meter, i)
        caps.append(spec)
    return None if len(problems) > before else tuple(caps)


def parse_prepaid(raw: object, at: str, problems: list[str]) -> PrepaidSpec | None:
    """A ``prepaid`` section: ``{policy: block}`` or ``{policy: throttle, floor_bytes_per_second: N}``."""
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: must be a mapping such as {{policy: block}}")
        return None
    before = len(problems)
    _unknown(raw, _PREPAID_KEYS, at, problems)
    policy = raw.get("policy")
    if policy not in _PREPAID_POLICIES:
        problems.append(f"{at}.policy: {policy!r} is not a prepaid policy; expected one of throttle, block")
    floor = _floor(raw, policy, at, "policy", problems)
    if len(problems) > before:
        return None
    return PrepaidSpec(cast(Literal["throttle", "block"], policy), floor)


def prepaid_caps(spec: PrepaidSpec, remaining: Mapping[str, int], caps: Sequence[CapSpec]) -> tuple[CapSpec, ...]:
    """The plan's ``caps`` with each meter of ``remaining`` (meter → base units the account's unit
    grants had left at the start of the month) capped there under ``spec``'s policy; where the
    plan caps that meter too, the smaller included volume wins (the plan's cap on a tie)."""
    planned = {c.cap.meter: c for c in caps}
    out = [c for c in caps if c.cap.meter not in remaining or c.cap.included <= remaining[c.cap.meter]]
    for meter in CAP_METERS:
        if meter in remaining and (meter not in planned or remaining[meter] < planned[meter].cap.included):
            out.append(CapSpec(Cap(meter, max(0, remaining[meter]), spec.policy, spec.floor_bytes_per_second)))
    return tuple(out)


# --- stored documents (JSON) -----------------------------------------------------------------


def _grant_doc(g: Grant, kind: str) -> dict[str, Any]:
    doc = g.doc()
    if kind == "groups":
        doc.pop("operations")
    return doc


def access_doc(a: Access) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if a.topics is not None:
        doc["topics"] = [_grant_doc(g, "topics") for g in a.topics]
    if a.groups is not None:
        doc["groups"] = [_grant_doc(g, "groups") for g in a.groups]
    return doc


def access_from_doc(doc: Mapping[str, Any]) -> Access:
    def grants(key: str) -> tuple[Grant, ...] | None:
        return None if doc.get(key) is None else tuple(Grant.from_doc(g) for g in doc[key])

    return Access(grants("topics"), grants("groups"))


def limits_doc(limits: Limits) -> dict[str, int]:
    return {k: v for k, v in limits.doc().items() if v is not None}


def limits_from_doc(doc: Mapping[str, Any]) -> Limits:
    return Limits(**{k: int(doc[k]) for k in _LIMIT_KEYS if doc.get(k) is not None})


def caps_doc(caps: Sequence[CapSpec]) -> list[dict[str, Any]]:
    return [{**c.cap.doc(), "unit": c.unit} for c in caps]


def caps_from_doc(docs: Sequence[Mapping[str, Any]]) -> tuple[CapSpec, ...]:
    return tuple(
        CapSpec(
            Cap(
                str(d["meter"]),
                int(d["included"]),
                d["policy"],
                d.get("floor_bytes_per_second"),
                bool(d.get("block_fetch", False)),
            ),
            d.get("unit"),
        )
        for d in docs
    )


def prepaid_doc(spec: PrepaidSpec) -> dict[str, Any]:
    return {"policy": spec.policy, "floor_bytes_per_second": spec.floor_bytes_per_second}


def prepaid_from_doc(doc: Mapping[str, Any]) -> PrepaidSpec:
    floor = doc.get("floor_bytes_per_second")
    return PrepaidSpec(doc["policy"], None if floor is None else int(floor))


# --- an account's entitlement ----------------------------------------------------------------


def _union(plan: tuple[Grant, ...] | None, extra: tuple[Grant, ...] | None) -> tuple[Grant, ...] | None:
    if plan is None:  # the plan does not restrict: extras add nothing to "everything"
        return None
    if extra is None:
        return plan
    return plan + tuple(g for g in extra if g not in plan)


def entitlement_for(
    account: str,
    plan: str | None = None,
    plan_version: int | None = None,
    plan_access: Access | None = None,
    limits: Limits | None = None,
    caps: Sequence[CapSpec] = (),
    account_access: Access | None = None,
) -> Entitlement:
    """``account``'s entitlement under its plan version in force (``plan`` None: no plan, nothing
    restricted) plus its own grants."""
    if plan is None:
        return Entitlement(account)
    pa = plan_access or Access()
    extra = account_access or Access()
    return Entitlement(
        account=account,
        plan=plan,
        plan_version=plan_version,
        topics=_union(pa.topics, extra.topics),
        groups=_union(pa.groups, extra.groups),
        limits=limits or Limits(),
        caps=tuple(c.cap for c in caps),
    )
