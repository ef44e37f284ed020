"""The live one-minute table, through Faust's agent test context (no broker needed)."""

from __future__ import annotations

import asyncio
from typing import Any

from metering.contracts import apply_minute as apply_partial
from metering.settings import MeteringSettings
from metering.streams.live import LiveApp, Minute, window_key

BASE = 1_794_303_600  # 2026-11-10T12:00:00Z


def partial(shard: str, offset: int, b: int, minute: int = 0, principal: str = "User:a") -> Minute:
    return Minute(
        minute_start="",
        minute_epoch_s=BASE + 60 * minute,
        source="proxy",
        principal=principal,
        client_id="c",
        virtual_cluster="",
        topic="orders",
        direction="produce",
        bytes=b,
        records=1,
        requests=1,
        denied_requests=0,
        shard=shard,
        offset=offset,
    )


def test_apply_partial_skips_replays_per_shard() -> None:
    p = {"shard": "t/0", "offset": 10, "bytes": 5, "records": 1, "requests": 1, "denied_requests": 0}
    one = apply_partial(None, p)
    assert one is not None and one["bytes"] == 5
    assert apply_partial(one, p) is None  # same shard, same offset: a replay
    two = apply_partial(one, {**p, "shard": "t/1"})
    assert two is not None and two["bytes"] == 10 and two["applied"] == {"t/0": 10, "t/1": 10}
    assert apply_partial(two, {**p, "offset": 9}) is None  # older batch of the same shard


def test_agent_folds_partials_idempotently_into_minute_windows() -> None:
    live = LiveApp(MeteringSettings.from_env({"STREAMTOLL_KAFKA_BOOTSTRAP": "127.0.0.1:1"}))
    live.app.finalize()
    live.app.conf.store = "memory://"
    live.app.flow_control.resume()

    async def run() -> list[Any]:
        results = []
        async with live.agent.test_context() as agent:
            for p in [
                partial("t/0", 5, 100),
                partial("t/0", 5, 100),
                partial("t/1", 3, 7),
                partial("t/0", 9, 1),
                partial("t/0", 12, 50, minute=1),
            ]:
                event = await agent.put(p)
                results.append(agent.results[event.message.offset])
        return results

    results = asyncio.run(run())
    assert [r["bytes"] if r else None for r in results] == [100, None, 107, 108, 50]
    assert window_key(partial("t/0", 1, 1)) == '["proxy","User:a","c","","orders","produce"]'


def test_the_faust_record_reads_exactly_the_published_contract() -> None:
    from dataclasses import fields

    from metering.contracts import UsageMinute

    assert [f.name for f in fields(UsageMinute)] == list(Minute._options.fields)
