"""Streaming API products: a named set of topics offered to partners, its contract (a schema per
topic), the plans that include it, and what a subscription to it grants at the gateway.

The catalog file (``products.yaml``, beside ``plans.yaml``; schema files are read relative to it)::

    products:
      - code: orders-feed
        name: Orders feed
        description: Every order placed, as it is placed.
        direction: consume                   # produce | consume | both
        topics:
          - name: orders.v1                  # or prefix: "orders.archive."
            schema: {type: json, file: schemas/orders.v1.json}   # json (JSON Schema) | avro | protobuf
        plans:
          - {plan: growth, self_service: true}
          - {plan: enterprise}               # included, but a subscription needs approval
        deprecated_until: 2027-06-30         # optional: this (the newest) version works until then
        deprecated_versions: {1: 2027-03-31} # optional: earlier versions' dates

Decisions made here (the issue is silent on them):

* **Versions.** A product's version is its contract: name, description, direction, topics, the
  schemas' text and its plans (:func:`product_document` + :func:`product_digest`). Loading a
  changed product publishes a new version; the same file twice changes nothing. A deprecation
  date is not part of the contract: setting it changes the version it names, not the version
  number. A subscription keeps the version it was granted (as a plan subscription does);
  subscribing again moves it to the newest version.
* **Deprecation.** ``deprecated_until`` is the last UTC day the version works (inclusive): from
  the next day it grants nothing (:func:`works_on`). A product whose newest version is
  deprecated takes no new subscriptions. A date in the file is the truth for the version it
  names: the newest version's date is the entry's ``deprecated_until`` (absent: none); an
  earlier version not named in ``deprecated_versions`` keeps its date.
* **Grants.** ``produce`` grants ``write`` on the product's topics, ``consume`` grants ``read``
  and the consumer groups whose names start with the account's code and a dash (``acme-``: the
  same convention as the sample client ids), ``both`` grants both (:func:`product_access`).
  A topic is a literal name or a prefix (a glob would make the contract unclear).
* **Plans.** A product is offered to the accounts whose plan in force is one of its ``plans``;
  ``self_service: true`` there means a subscription is active at once, otherwise it is a
  request finance or ops approve (:func:`subscription_route`). A subscription grants only while
  the account's plan in force still includes the product (the version's list): an account
  moved to a plan without it keeps the row but loses the topics.
* **Schemas.** ``json`` (JSON Schema) must be a JSON object, ``avro`` JSON (an ``.avsc``),
  ``protobuf`` a non-empty ``.proto`` text; no schema registry is involved — the text is kept
  with the version and served as the product's contract.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Literal, cast

from billing.domain.access import Access
from billing.errors import CatalogError
from metering.entitlements import Grant

__all__ = [
    "DIRECTIONS",
    "SCHEMA_TYPES",
    "Product",
    "ProductPlan",
    "ProductTopic",
    "check_plans",
    "consumer_group_prefix",
    "parse_products",
    "product_access",
    "product_digest",
    "product_document",
    "product_from_document",
    "product_schemas",
    "subscription_route",
    "with_products",
    "works_on",
]

DIRECTIONS: Final = ("produce", "consume", "both")
SCHEMA_TYPES: Final = ("json", "avro", "protobuf")
_CODE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_KEYS: Final = (
    "code",
    "name",
    "description",
    "direction",
    "topics",
    "plans",
    "deprecated_until",
    "deprecated_versions",
)


@dataclass(frozen=True)
class ProductTopic:
    """A topic (literal name) or a set of topics (prefix) and its schema, if any."""

    pattern: str
    match: Literal["literal", "prefix"] = "literal"
    schema_type: str | None = None
    schema_file: str | None = None  # as written in the catalog (relative to it)
    schema: str | None = None  # the text


@dataclass(frozen=True)
class ProductPlan:
    plan: str
    self_service: bool = False


@dataclass(frozen=True)
class Product:
    code: str
    name: str
    description: str
    direction: str
    topics: tuple[ProductTopic, ...]
    plans: tuple[ProductPlan, ...]
    deprecated_until: date | None = None  # of the version this entry describes
    deprecated_versions: Mapping[int, date] = field(default_factory=dict)  # earlier versions


SchemaReader = Callable[[str], str]
"""``file as written → its text``; raises ``OSError`` or ``ValueError`` when it cannot be read."""


# --- validation -------------------------------------------------------------------------------


def _text(raw: Mapping[str, Any], key: str, at: str, problems: list[str], required: bool = True) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{at}.{key}: required, a non-empty string")
        return ""
    return value.strip()


def _date(value: object, at: str, problems: list[str]) -> date | None:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    problems.append(f"{at}: must be a date such as 2027-06-30, got {value!r}")
    return None


def _check_schema(kind: str, text: str) -> str | None:
    """Why ``text`` is not a schema of ``kind`` (None: it is)."""
    if not text.strip():
        return "is empty"
    if kind == "protobuf":
        return None if ("message" in text or "syntax" in text) else "is not a .proto file (no syntax or message)"
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        return f"is not JSON ({exc})"
    if kind == "json" and not isinstance(parsed, dict):
        return "is not a JSON Schema (the top level must be an object)"
    return None


def _topic(raw: object, at: str, read: SchemaReader, problems: list[str]) -> ProductTopic | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{at}: must be a mapping with name or prefix, e.g. {{name: orders.v1}}")
        return None
    for key in raw:
        if key not in ("name", "prefix", "schema"):
            problems.append(f"{at}.{key}: unknown field; expected one of name, prefix, schema")
    given = [k for k in ("name", "prefix") if k in raw]
    if len(given) != 1:
        problems.append(f"{at}: give exactly one of name or prefix, got {len(given) or 'none'}")
        return None
    pattern = raw[given[0]]
    if not isinstance(pattern, str) or not pattern.strip():
        problems.append(f"{at}.{given[0]}: must be a non-empty string")
        return None
    match: Literal["literal", "prefix"] = "literal" if given[0] == "name" else "prefix"
    if "schema" not in raw or raw["schema"] is None:
        return ProductTopic(pattern, match)
    schema = raw["schema"]
    if not isinstance(schema, Mapping) or set(schema) - {"type", "file"}:
        problems.append(f"{at}.schema: must be a mapping with type ({', '.join(SCHEMA_TYPES)}) and file")
        return None
    kind, file = schema.get("type"), schema.get("file")
    ok = True
    if kind not in SCHEMA_TYPES:
        problems.append(f"{at}.schema.type: {kind!r} is not a schema type; expected one of {', '.join(SCHEMA_TYPES)}")
        ok = False
    if not isinstance(file, str) or not file.strip():
        problems.append(f"{at}.schema.file: required, the schema's file (relative to the catalog file)")
        ok = False
    if not ok:
        return None
    try:
        text = read(str(file))
    except (OSError, ValueError) as exc:
        problems.append(f"{at}.schema.file: {file} cannot be read ({exc})")
        return None
    why = _check_schema(str(kind), text)
    if why is not None:
        problems.append(f"{at}.schema.file: {file} {why}")
        return None
    return ProductTopic(pattern, match, str(kind), str(file), text)


def _plans(raw: object, at: str, problems: list[str]) -> tuple[ProductPlan, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{at}: must be a non-empty list such as [{{plan: growth, self_service: true}}]")
        return ()
    out: list[ProductPlan] = []
    for i, entry in enumerate(raw):
        where = f"{at}[{i}]"
        if isinstance(entry, str):
            entry = {"plan": entry}
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a mapping with plan and self_service")
            continue
        for key in entry:
            if key not in ("plan", "self_service"):
                problems.append(f"{where}.{key}: unknown field; expected one of plan, self_service")
        plan = entry.get("plan")
        self_service = entry.get("self_service", False)
        if not isinstance(plan, str) or not plan.strip():
            problems.append(f"{where}.plan: required, a plan's code")
            continue
        if not isinstance(self_service, bool):
            problems.append(f"{where}.self_service: must be true or false, got {self_service!r}")
            continue
        if any(p.plan == plan for p in out):
            problems.append(f"{where}.plan: {plan!r} is listed twice")
            continue
        out.append(ProductPlan(plan, self_service))
    return tuple(out)


def _product(raw: Mapping[str, Any], at: str, read: SchemaReader, problems: list[str]) -> Product | None:
    before = len(problems)
    code = raw.get("code")
    if not isinstance(code, str) or not _CODE.match(code):
        problems.append(f"{at}.code: required, lower case letters, digits, '.', '_' or '-' (e.g. orders-feed)")
        code = ""
    else:
        at = f"{at} ({code})"
    for key in raw:
        if key not in _KEYS:
            problems.append(f"{at}.{key}: unknown field; expected one of {', '.join(_KEYS)}")
    name = _text(raw, "name", at, problems)
    description = _text(raw, "description", at, problems, required=False)
    direction = raw.get("direction")
    if direction not in DIRECTIONS:
        problems.append(f"{at}.direction: {direction!r} is not a direction; expected one of {', '.join(DIRECTIONS)}")
    topics: list[ProductTopic] = []
    raw_topics = raw.get("topics")
    if not isinstance(raw_topics, list) or not raw_topics:
        problems.append(f"{at}.topics: must be a non-empty list such as [{{name: orders.v1}}]")
    else:
        for i, t in enumerate(raw_topics):
            topic = _topic(t, f"{at}.topics[{i}]", read, problems)
            if topic is None:
                continue
            if any((o.pattern, o.match) == (topic.pattern, topic.match) for o in topics):
                problems.append(f"{at}.topics[{i}]: {topic.pattern!r} is listed twice")
                continue
            topics.append(topic)
    plans = _plans(raw.get("plans"), f"{at}.plans", problems)
    until = (
        None
        if raw.get("deprecated_until") is None
        else _date(raw["deprecated_until"], f"{at}.deprecated_until", problems)
    )
    earlier: dict[int, date] = {}
    versions = raw.get("deprecated_versions")
    if versions is not None:
        if not isinstance(versions, Mapping):
            problems.append(f"{at}.deprecated_versions: must map a version number to a date, e.g. {{1: 2027-03-31}}")
        else:
            for v, d in versions.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    problems.append(f"{at}.deprecated_versions: {v!r} is not a version number (1, 2, …)")
                    continue
                when = _date(d, f"{at}.deprecated_versions[{v}]", problems)
                if when is not None:
                    earlier[v] = when
    if len(problems) > before:
        return None
    return Product(str(code), name, description, str(direction), tuple(topics), plans, until, earlier)


def parse_products(doc: Any, source: str, read: SchemaReader) -> list[Product]:
    """The products of the catalog file ``source``; every mistake at once (:class:`CatalogError`),
    each naming the file, the entry and the field."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("products"), list):
        raise CatalogError([f"{source}: the top level must be a mapping with a 'products' list"])
    problems: list[str] = []
    parsed: list[Product] = []
    for i, entry in enumerate(doc["products"]):
        if not isinstance(entry, Mapping):
            problems.append(f"{source}: products[{i}]: must be a mapping")
            continue
        product = _product(entry, f"{source}: products[{i}]", read, problems)
        if product is not None:
            parsed.append(product)
    seen: set[str] = set()
    for p in parsed:
        if p.code in seen:
            problems.append(f"{source}: product {p.code!r} appears twice")
        seen.add(p.code)
    if problems:
        raise CatalogError(problems)
    return parsed


def check_plans(products: Sequence[Product], plans: set[str], source: str) -> list[str]:
    """Problems of ``products`` naming a plan that is not loaded."""
    return [
        f"{source}: product {p.code!r}: plan {pp.plan!r} is not loaded; run `streamtoll plans load` first"
        for p in products
        for pp in p.plans
        if pp.plan not in plans
    ]


# --- stored documents ------------------------------------------------------------------------


def product_document(p: Product) -> dict[str, Any]:
    """A product version's contract as stored (without the schemas' text, kept beside it, nor
    the deprecation dates, which are not part of the contract)."""
    return {
        "code": p.code,
        "name": p.name,
        "description": p.description,
        "direction": p.direction,
        "topics": [
            {
                "pattern": t.pattern,
                "match": t.match,
                "schema": None if t.schema_type is None else {"type": t.schema_type, "file": t.schema_file},
            }
            for t in p.topics
        ],
        "plans": [{"plan": pp.plan, "self_service": pp.self_service} for pp in p.plans],
    }


def product_schemas(p: Product) -> dict[str, str]:
    """``topic pattern → schema text`` of the topics that have one."""
    return {t.pattern: t.schema for t in p.topics if t.schema is not None}


def product_digest(document: Mapping[str, Any], schemas: Mapping[str, str]) -> str:
    """What identifies a version's contract: its document and its schemas' text."""
    blob = json.dumps({"document": document, "schemas": schemas}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def product_from_document(
    document: Mapping[str, Any], schemas: Mapping[str, str], deprecated_until: date | None = None
) -> Product:
    topics = tuple(
        ProductTopic(
            t["pattern"],
            t["match"],
            None if t.get("schema") is None else t["schema"]["type"],
            None if t.get("schema") is None else t["schema"]["file"],
            schemas.get(t["pattern"]),
        )
        for t in document["topics"]
    )
    plans = tuple(ProductPlan(pp["plan"], bool(pp["self_service"])) for pp in document["plans"])
    return Product(
        document["code"],
        document["name"],
        document.get("description", ""),
        document["direction"],
        topics,
        plans,
        deprecated_until,
    )


# --- rules ------------------------------------------------------------------------------------


def works_on(deprecated_until: date | None, on: date) -> bool:
    """A version works on the UTC day ``on`` unless deprecated with a date before it
    (``deprecated_until`` is the last day it works)."""
    return deprecated_until is None or on <= deprecated_until


def subscription_route(plans: Sequence[ProductPlan], plan: str | None) -> Literal["self_service", "approval"] | None:
    """How an account on ``plan`` subscribes: at once, after approval, or not at all (None: the
    product is not in its plan, or it has no plan in force)."""
    for pp in plans:
        if pp.plan == plan:
            return "self_service" if pp.self_service else "approval"
    return None


def consumer_group_prefix(account: str) -> str:
    """The consumer groups a consume product lets ``account`` use: its code and a dash."""
    return f"{account}-"


def product_access(account: str, products: Sequence[Product]) -> Access:
    """What ``products`` (those ``account`` is subscribed to, in force) grant it: topic grants
    (produce → write, consume → read, both → both) and, when any consumes, its consumer groups.
    Topic grants of one pattern from several products are merged (their operations unioned)."""
    ops: dict[tuple[str, str], set[str]] = {}
    consumes = False
    for p in products:
        wanted = {"produce": {"write"}, "consume": {"read"}, "both": {"read", "write"}}[p.direction]
        consumes = consumes or "read" in wanted
        for t in p.topics:
            ops.setdefault((t.pattern, t.match), set()).update(wanted)
    topics = tuple(
        Grant(pattern, cast(Literal["literal", "prefix"], match), frozenset(o)) for (pattern, match), o in ops.items()
    )
    groups = (Grant(consumer_group_prefix(account), "prefix"),) if consumes else ()
    return Access(topics, groups)


def with_products(extra: Access | None, products: Access) -> Access:
    """An account's explicit grants (``extra``) plus what its products grant: the extras the
    entitlement adds to the plan's grants (where the plan restricts; see ``entitlement_for``)."""
    mine = extra or Access()

    def plus(a: tuple[Grant, ...] | None, b: tuple[Grant, ...] | None) -> tuple[Grant, ...] | None:
        if not b:
            return a
        base = a or ()
        return base + tuple(g for g in b if g not in base)

    return Access(plus(mine.topics, products.topics), plus(mine.groups, products.groups))
