"""Faust glue for the live views: usage minutes topic → a one-minute tumbling table.

The hot path (``metering.engine``) publishes, in its transactions, one partial sum per
(window key, minute) per batch. This agent folds those partials — a few thousand a second, well
within what a Faust stream does — into a tumbling one-minute table keyed by the window key, by
*event* time (the partial's minute), kept for an hour. Folding is idempotent
(:func:`metering.contracts.apply_minute`), so Faust's at-least-once delivery cannot double
a live number. The table is for ops views only: billing never reads it (it reads the usage
windows topic), so a window-close or a rebalance can never change a bill.

The usage minutes topic is keyed by window key + minute, so all partials of one table key land
in one partition and one worker folds them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import faust
import orjson

from metering.contracts import apply_minute, empty_live
from metering.settings import MeteringSettings

__all__ = ["LiveApp", "Minute", "window_key"]

WINDOW_FIELDS = ("source", "principal", "client_id", "virtual_cluster", "topic", "direction")


class Minute(faust.Record, serializer="json"):
    """A usage minutes record (``metering.contracts.UsageMinute``) as Faust reads it."""

    minute_start: str
    minute_epoch_s: int
    source: str
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str
    bytes: int
    records: int
    requests: int
    denied_requests: int
    shard: str
    offset: int


def window_key(m: Minute | dict[str, Any]) -> str:
    """The table key: the window key as a JSON array (unambiguous, readable in the changelog)."""
    get = m.get if isinstance(m, dict) else lambda f: getattr(m, f)
    return orjson.dumps([get(f) for f in WINDOW_FIELDS]).decode()


class LiveApp:
    """The Faust app, its topic, table and agent, built from settings (one composition root)."""

    def __init__(self, settings: MeteringSettings, store: str = "memory://", web_port: int | None = None) -> None:
        s = settings
        broker = ";".join(f"kafka://{h}" for h in (s.kafka_bootstrap or "localhost:9092").split(","))
        self.app = faust.App(
            f"{s.group_id}-live",
            broker=broker,
            store=store,
            topic_partitions=4,
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(0.3, s.session_timeout_ms / 10_000),
            web_enabled=web_port is not None,
            web_port=web_port or 6066,
            topic_allow_declare=True,
            producer_acks=1,
        )
        self.topic = self.app.topic(s.topic_usage_minutes, value_type=Minute)
        self.table = (
            self.app.Table("live-minutes", default=empty_live, partitions=4)
            .tumbling(timedelta(minutes=1), expires=timedelta(hours=1))
            .relative_to_field(Minute.minute_epoch_s)  # type: ignore[arg-type]  # a FieldDescriptor at run time
        )
        self.agent = self.app.agent(self.topic, name="fold-minutes")(self._fold)

    async def _fold(self, stream: Any) -> Any:
        async for minute in stream:
            key = window_key(minute)
            window = self.table[key]
            updated = apply_minute(window.value(), minute.asdict())
            if updated is not None:
                self.table[key] = updated
            yield updated
