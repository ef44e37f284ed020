"""Quota events (pure): which events an episode's record may emit, and their data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from billing.domain.quota_events import quota_event_data, quota_event_types
from billing.domain.webhooks import EVENT_TYPES


def test_a_throttle_or_block_emits_its_start_and_once_ended_its_release() -> None:
    assert quota_event_types("throttle", ended=False) == ("quota.throttled",)
    assert quota_event_types("block", ended=False) == ("quota.blocked",)
    assert quota_event_types("throttle", ended=True) == ("quota.throttled", "quota.released")  # start first
    assert quota_event_types("block", ended=True) == ("quota.blocked", "quota.released")
    assert {"quota.throttled", "quota.blocked", "quota.released"} <= set(EVENT_TYPES)
    with pytest.raises(ValueError, match="unknown enforcement episode kind"):
        quota_event_types("nap", ended=False)


def test_the_data_is_the_episode_with_utc_instants() -> None:
    cet = timezone(timedelta(hours=1))
    data = quota_event_data(
        episode_id="gw/acme/block/produce/1",
        gateway="gw",
        kind="block",
        direction="produce",
        cause="cap",
        reason="monthly cap reached",
        limit=None,
        meter="produce_bytes",
        started=datetime(2026, 12, 3, 10, 0, 0, 250000, tzinfo=cet),  # 09:00:00.250 UTC
        ended=datetime(2026, 12, 3, 9, 5, tzinfo=UTC),
    )
    assert data == {
        "episode": {
            "id": "gw/acme/block/produce/1",
            "gateway": "gw",
            "kind": "block",
            "direction": "produce",
            "cause": "cap",
            "meter": "produce_bytes",
            "limit_per_second": None,
            "reason": "monthly cap reached",
            "started_at": "2026-12-03T09:00:00.250Z",
            "ended_at": "2026-12-03T09:05:00.000Z",
        }
    }
