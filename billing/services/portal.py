"""What the partner portal's pages show that no other use case already answers: the Kafka client
configurations for a credential, usage as chart series, and a partner's products with where its
subscription to each stands.

Everything else the portal shows comes from the use cases the partner API uses (statements,
entitlements, credentials, invoices, credit notes), called with the signed-in partner's account.

Decisions where issue 20 is silent:

* **Client configs** name ``SCRAM-SHA-512`` (every client library speaks it; PLAIN is only
  offered over TLS) and the gateway address and security protocol from the settings
  (``STREAMTOLL_PORTAL_GATEWAY_*``). Without the password (a credential listed, not just made)
  the snippets say ``<your password>``.
* **Usage series** count each quantity from one source, the first in the billing source order
  (``STREAMTOLL_BILLING_SOURCES``) that has usage of the account in the range — the source the
  statement rates — so two sources that saw the same traffic are never added together. Days run
  over the whole month, hours over one UTC day (24 points); a bucket without usage is a zero.
* **Products** show the partner's live subscription (``subscribed`` or ``requested``); without
  one, its last request if finance or ops rejected it (``rejected``, with the reason), so the
  partner learns why and may ask again; a cancelled one shows as nothing. A product its plan no
  longer includes is listed while it has a live subscription to it (to see and cancel it). The plans a product
  is offered on are never shown (they name other partners' plans).
* **Schemas** download as ``<product>-v<version>-<topic>.json`` (JSON Schema), ``.avsc`` (Avro)
  or ``.proto`` (Protobuf), the text kept with the version, served by the portal itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from billing.adapters.uow import Database
from billing.domain.sources import DEFAULT_SOURCES
from billing.services.products import account_subscriptions, list_products, product_view
from billing.services.usage import account_report

__all__ = [
    "BY",
    "CHART_QUANTITIES",
    "Chart",
    "client_configs",
    "partner_product",
    "partner_products",
    "schema_download",
    "subscription_state",
    "usage_chart",
]

MECHANISM = "SCRAM-SHA-512"
PASSWORD_PLACEHOLDER = "<your password>"
BOOTSTRAP_PLACEHOLDER = "<gateway host:port>"
BY = {"topic": "topic", "client": "client_id", "direction": "direction"}  # the page's word → usage grouping
CHART_QUANTITIES = ("bytes", "records", "requests")


def client_configs(bootstrap: str, protocol: str, username: str, password: str | None) -> dict[str, str]:
    """Ready-to-paste configurations for the gateway: ``python`` (confluent-kafka), ``java``
    (client properties) and ``kcat`` (a librdkafka config file and the commands using it)."""
    server = bootstrap or BOOTSTRAP_PLACEHOLDER
    secret = password or PASSWORD_PLACEHOLDER
    group = username.replace("/", "-") + "-group"
    python = (
        "from confluent_kafka import Consumer, Producer\n\n"
        "config = {\n"
        f'    "bootstrap.servers": "{server}",\n'
        f'    "security.protocol": "{protocol}",\n'
        f'    "sasl.mechanism": "{MECHANISM}",\n'
        f'    "sasl.username": "{username}",\n'
        f'    "sasl.password": "{secret}",\n'
        "}\n"
        "producer = Producer(config)\n"
        f'consumer = Consumer({{**config, "group.id": "{group}", "auto.offset.reset": "earliest"}})\n'
    )
    java = (
        f"bootstrap.servers={server}\n"
        f"security.protocol={protocol}\n"
        f"sasl.mechanism={MECHANISM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        f'    username="{username}" \\\n'
        f'    password="{secret}";\n'
    )
    kcat = (
        "# save as kcat.conf (librdkafka properties), then:\n"
        "#   kcat -F kcat.conf -L                       list what you may read and write\n"
        "#   kcat -F kcat.conf -P -t TOPIC              produce lines from stdin\n"
        "#   kcat -F kcat.conf -C -t TOPIC -e           consume to the end\n"
        f"bootstrap.servers={server}\n"
        f"security.protocol={protocol}\n"
        f"sasl.mechanisms={MECHANISM}\n"
        f"sasl.username={username}\n"
        f"sasl.password={secret}\n"
    )
    return {"python": python, "java": java, "kcat": kcat}


@dataclass(frozen=True)
class Chart:
    """One quantity over time, one series per topic, client or direction."""

    quantity: str
    granularity: str  # day | hour
    source: str | None  # where the quantity was counted (None: no usage in the range)
    times: list[str]  # bucket starts: YYYY-MM-DD, or YYYY-MM-DDTHH:00Z
    series: list[tuple[str, list[int]]]  # (name, value per bucket)

    @property
    def total(self) -> int:
        return sum(sum(values) for _, values in self.series)

    def doc(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "granularity": self.granularity,
            "source": self.source,
            "times": self.times,
            "series": [{"name": n, "values": v} for n, v in self.series],
        }


def _buckets(start: datetime, end: datetime, granularity: str) -> list[str]:
    step = timedelta(hours=1) if granularity == "hour" else timedelta(days=1)
    out, t = [], start
    while t < end:
        out.append(t.strftime("%Y-%m-%dT%H:00Z") if granularity == "hour" else t.date().isoformat())
        t += step
    return out


def usage_chart(
    engine: Database,
    account: str,
    start: date,
    end: date,
    granularity: str,
    by: str,
    quantity: str,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> Chart:
    """``account``'s ``quantity`` per ``granularity`` bucket in the UTC days ``[start, end)``, one
    series per value of ``by`` (``topic``, ``client`` or ``direction``), from one source."""
    if by not in BY or quantity not in CHART_QUANTITIES or granularity not in ("day", "hour"):
        raise ValueError(f"cannot chart {quantity} by {by} per {granularity}")
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    finish = datetime(end.year, end.month, end.day, tzinfo=UTC)
    field = BY[by]
    rows = account_report(engine, account, begin, finish, (granularity, field, "source"))
    order = (source_order or DEFAULT_SOURCES).get(quantity, ())
    source = next((s for s in order if any(r["source"] == s and r[quantity] for r in rows)), None)
    times = _buckets(begin, finish, granularity)
    index = {t: i for i, t in enumerate(times)}
    values: dict[str, list[int]] = {}
    for r in rows:
        if r["source"] != source or not r[quantity]:
            continue
        at = r[granularity]
        key = at[:13] + ":00Z" if granularity == "hour" else at
        if key in index:
            values.setdefault(str(r[field] or "(none)"), [0] * len(times))[index[key]] += int(r[quantity])
    series = sorted(values.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    return Chart(quantity, granularity, source, times, series)


# --- products ---------------------------------------------------------------------------------

_SCHEMA_FILES = {
    "json": (".json", "application/schema+json"),
    "avro": (".avsc", "application/json"),
    "protobuf": (".proto", "text/plain; charset=utf-8"),
}


def subscription_state(live: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Where an account's subscription to one product stands: ``subscribed`` or ``requested``
    (its live one), else ``rejected`` (its last request, when rejected: with the reason), else
    ``None``; ``subscription`` is the one it is about."""
    if live is not None:
        return {"state": "subscribed" if live["status"] == "active" else "requested", "subscription": dict(live)}
    last = history[-1] if history else None
    if last is not None and last["status"] == "rejected":
        return {"state": "rejected", "subscription": dict(last)}
    return {"state": None, "subscription": None}


def _with_state(doc: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [h for h in history if h["product"] == doc["code"]]
    doc.update(subscription_state(doc["subscription"], mine))
    doc.pop("plans", None)  # other partners' plans: never shown
    return doc


def partner_products(engine: Engine, account: str) -> list[dict[str, Any]]:
    """The products of ``account``'s plan (newest versions, catalog order), each with ``state``."""
    history = account_subscriptions(engine, account)
    listed = [_with_state(doc, history) for doc in list_products(engine, account)]
    # a live subscription to a product its plan no longer includes (a plan change): shown too,
    # so the partner sees it and can cancel it
    offered = {doc["code"] for doc in listed}
    for code in dict.fromkeys(h["product"] for h in history if h["status"] in ("requested", "active")):
        if code not in offered:
            listed.append(_with_state(product_view(engine, code, account), history))
    return listed


def partner_product(engine: Engine, account: str, code: str, version: int | None = None) -> dict[str, Any]:
    """One product as ``account`` sees it (``ProductNotFound`` unless its plan includes it or it
    subscribes to it), with its schemas' text, ``state``, and ``subscribed_version``: the version
    entry (with its deprecation) its subscription is on."""
    doc = _with_state(product_view(engine, code, account, version), account_subscriptions(engine, account))
    sub = doc["subscription"]
    on = None if sub is None else next((v for v in doc["versions"] if v["version"] == sub["version"]), None)
    doc["subscribed_version"] = on
    return doc


def schema_download(doc: Mapping[str, Any], index: int) -> tuple[str, str, str] | None:
    """``(file name, media type, text)`` of the schema of ``doc``'s topic number ``index`` (None:
    no such topic, or it has no schema)."""
    topics = doc["topics"]
    if not 0 <= index < len(topics) or topics[index]["schema"] is None or topics[index]["schema"].get("text") is None:
        return None
    schema = topics[index]["schema"]
    suffix, media = _SCHEMA_FILES.get(schema["type"], (".txt", "text/plain; charset=utf-8"))
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in topics[index]["pattern"]).strip("._") or "topic"
    return f"{doc['code']}-v{doc['version']}-{stem}{suffix}", media, str(schema["text"])
