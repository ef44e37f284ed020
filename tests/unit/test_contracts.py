"""``metering/contracts.py``: the published records are built there, in their declared order, and
parsed back there; ``tests/unit/test_formats.py`` checks them against the document and schemas."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields

import orjson
import pytest

from metering import contracts
from metering.contracts import UsageMinute, UsageWindow, dlq_record, minute_record, window_record

HOUR = 1_793_700_000_000  # 2026-11-03T10:00:00Z
KEY = ("proxy", "User:acme-orders", "orders-svc-7", "prod", "orders", "produce")


def test_a_window_record_has_the_declared_fields_in_order_and_its_documented_key() -> None:
    key, doc = window_record(KEY, HOUR, [48213, 120, 1, 0], 18212, "proxy-audit/3")
    assert list(doc) == [f.name for f in fields(UsageWindow)]
    assert UsageWindow.from_json(orjson.dumps(doc)) == UsageWindow(**doc)
    assert (doc["window_start"], doc["window_end"]) == ("2026-11-03T10:00:00.000Z", "2026-11-03T11:00:00.000Z")
    assert doc["account"] is None and doc["version"] == 18212
    assert [doc[k] for k in ("bytes", "records", "requests", "denied_requests")] == [48213, 120, 1, 0]
    assert json.loads(orjson.dumps(key)) == [*KEY, HOUR, "proxy-audit/3"]


def test_a_minute_record_has_the_declared_fields_in_order_and_its_documented_key() -> None:
    minute = HOUR + 15 * 60_000
    key, doc = minute_record((*KEY, minute), (48213, 120, 1, 0), "proxy-audit/3", 18212)
    assert list(doc) == [f.name for f in fields(UsageMinute)]
    assert UsageMinute.from_json(orjson.dumps(doc)) == UsageMinute(**doc)
    assert (doc["minute_start"], doc["minute_epoch_s"]) == ("2026-11-03T10:15:00.000Z", minute // 1000)
    assert (doc["shard"], doc["offset"]) == ("proxy-audit/3", 18212)
    assert json.loads(orjson.dumps(key)) == [*KEY, minute]


def test_a_dlq_record_cuts_a_value_over_the_limit_and_says_what_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contracts, "DLQ_VALUE_LIMIT", 4)
    args = ("schema", "id is missing", "proxy-audit", 3, 7, 1, b"k")
    whole = dlq_record(*args, b"abcd", [("h", None)], "2026-11-03T10:15:01.118Z")
    assert "value_truncated" not in whole and whole["value_b64"] == "YWJjZA=="
    cut = dlq_record(*args, b"abcdef", None, "2026-11-03T10:15:01.118Z")
    assert cut["value_b64"] == "YWJjZA=="  # the first 4 bytes
    assert cut["value_truncated"] == {"size": 6, "sha256": hashlib.sha256(b"abcdef").hexdigest()}
    assert list(cut)[-1] == "value_truncated" and list(cut)[:-1] == list(whole)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff{}", b"[]", b"12", b'"window"', b"null", b'{"window_start": "2026-11-03T10:00:00.000Z"}'],
)
def test_reading_what_is_not_a_window_record_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        UsageWindow.from_json(raw)
    with pytest.raises(ValueError):
        UsageMinute.from_json(raw)


def test_reading_a_window_record_ignores_fields_it_does_not_know() -> None:
    _, doc = window_record(KEY, HOUR, (1, 2, 3, 4), 5, "proxy-audit/0")
    assert UsageWindow.from_json(json.dumps({**doc, "added_later": 1})) == UsageWindow(**doc)
