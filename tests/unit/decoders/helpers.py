from __future__ import annotations

from datetime import UTC, datetime

from metering.decoders.common import Limits

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def limits(now: datetime = NOW, lateness_days: int = 35, future_s: int = 300, max_bytes: int = 2**31) -> Limits:
    return Limits(int(now.timestamp() * 1000), lateness_days * 86_400_000, future_s * 1000, max_bytes)
