"""Per-key limits: the rate, the burst, slots at once and freed, memory bounded, the setting."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from billing.api.quota import KeyQuota, TooMany, admit, key_digest
from billing.errors import BillingSettingsError
from billing.settings import DEFAULT_LIMITS, BillingSettings, Limit, parse_limit

A = key_digest("stk_a_secret")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def quota(limit: Limit, clock: Clock, **kwargs: int) -> KeyQuota:
    return KeyQuota({"partner": limit, "finance": None}, clock=clock, **kwargs)


def refused(q: KeyQuota, key_id: str = "a", digest: bytes = A) -> TooMany:
    with pytest.raises(TooMany) as exc:
        q.acquire(key_id, "partner", digest)
    return exc.value


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    q = quota(Limit(rate=2.0, burst=5, concurrent=100), clock)
    for _ in range(5):
        q.acquire("a", "partner", A).release()
    over = refused(q)
    assert (over.reason, over.retry_after) == ("rate", 1) and over.ready_in == pytest.approx(0.5)
    clock.t += 0.5  # one token back
    q.acquire("a", "partner", A).release()
    assert refused(q).reason == "rate"
    clock.t += 10  # never more than the burst
    for _ in range(5):
        q.acquire("a", "partner", A).release()
    assert refused(q).reason == "rate"
    # another key has its own budget; a role without a limit has none
    q.acquire("b", "partner", key_digest("stk_b_x")).release()
    for _ in range(100):
        q.acquire("f", "finance", key_digest("stk_f_x")).release()


def test_retry_after_is_the_wait_for_the_next_token_in_whole_seconds() -> None:
    clock = Clock()
    q = quota(Limit(rate=1 / 60, burst=1, concurrent=1), clock)
    q.acquire("a", "partner", A).release()
    assert refused(q).retry_after == 60
    clock.t += 59.2
    assert refused(q).retry_after == 1


def test_slots_at_once_and_freed_whatever_happens() -> None:
    clock = Clock()
    q = quota(Limit(rate=1000.0, burst=1000, concurrent=2), clock)
    first, second = q.acquire("a", "partner", A), q.acquire("a", "partner", A)
    over = refused(q)
    assert (over.reason, over.retry_after, over.ready_in) == ("concurrency", 1, None)
    assert "2 requests" in over.detail and "retry in 1 s" in over.detail
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("the endpoint failed")
        finally:
            first.release()
    third = q.acquire("a", "partner", A)  # the failed one's slot
    first.release()  # twice changes nothing
    assert refused(q).reason == "concurrency"
    second.release()
    third.release()
    held = [q.acquire("a", "partner", A) for _ in range(2)]
    assert refused(q).reason == "concurrency"
    for h in held:
        h.release()


def test_before_authentication_only_the_same_secret_counts() -> None:
    clock = Clock()
    q = quota(Limit(rate=1.0, burst=1, concurrent=1), clock)
    assert q.acquire_known("a", A) is None  # never seen: authenticate first
    slot = q.acquire("a", "partner", A)
    with pytest.raises(TooMany):
        q.acquire_known("a", A)
    # a wrong secret for the same key id neither is refused here nor takes anything
    assert q.acquire_known("a", key_digest("stk_a_guess")) is None
    slot.release()
    clock.t += 1
    early = q.acquire_known("a", A)
    assert early is not None
    assert refused(q).reason == "concurrency"  # the early slot is a real one
    early.release()


def test_memory_is_bounded_and_running_keys_are_kept() -> None:
    # (a cap of 1,000 and ten times as many keys: the bound of the default 10,000 at a tenth of
    # the time tracemalloc costs)
    clock = Clock()
    q = quota(Limit(rate=1.0, burst=3, concurrent=1), clock, max_keys=1_000)
    running = q.acquire("busy", "partner", A)
    tracemalloc.start()
    try:
        for i in range(10_000):
            q.acquire(f"k{i}", "partner", key_digest(f"stk_k{i}_x")).release()
            if i == 2_000:
                at_cap, _ = tracemalloc.get_traced_memory()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(q) == 1_000
    assert after < at_cap * 1.1  # no growth once full
    assert refused(q, "busy").reason == "concurrency"  # still known: it has a request running
    running.release()
    # keys back to a full bucket with nothing running are the same as unseen: forgotten first
    clock.t += 10
    q.acquire("new", "partner", key_digest("stk_new_x")).release()
    assert len(q) == 1


def test_admit_waits_for_a_slot_then_refuses() -> None:
    q = KeyQuota({"partner": Limit(rate=1000.0, burst=1000, concurrent=1)})

    async def scenario() -> tuple[float, float]:
        held = q.acquire("a", "partner", A)
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, held.release)
        started = time.monotonic()
        slot = await admit(lambda: q.acquire("a", "partner", A), patience=2.0)
        served_after = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(TooMany):
            await admit(lambda: q.acquire("a", "partner", A), patience=0.3)
        refused_after = time.monotonic() - started
        slot.release()
        return served_after, refused_after

    served_after, refused_after = asyncio.run(scenario())
    assert 0.09 < served_after < 1.0
    assert 0.29 < refused_after < 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rate=2/s,burst=10,concurrent=2", Limit(2.0, 10, 2)),
        (" RATE = 120/m ", Limit(2.0, 30, 4)),
        ("concurrent=1", Limit(5.0, 30, 1)),
        ("rate=0.5/s", Limit(0.5, 30, 4)),
        ("rate=3600/h,burst=1", Limit(1.0, 1, 4)),
        ("off", None),
    ],
)
def test_parse_limit(text: str, expected: Limit | None) -> None:
    assert parse_limit(text, DEFAULT_LIMITS["partner"]) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("rate=2", "positive number per s, m or h"),
        ("rate=0/s", "positive number"),
        ("rate=-1/s", "positive number"),
        ("rate=１/s", "positive number"),
        ("burst=0", "whole number from 1 to 100000"),
        ("burst=2.5", "whole number"),
        ("concurrent=²", "whole number"),
        ("concurrent=100001", "whole number"),
        ("burst=1,burst=2", "burst is given twice"),
        ("speed=3", "is not rate=N/s"),
        ("rate=2/s;burst=3", "positive number"),
        ("", "is not rate=N/s"),
        ("rate=2/s,", "is not rate=N/s"),
    ],
)
def test_parse_limit_mistakes_are_one_sentence(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_limit(text, DEFAULT_LIMITS["partner"])


def test_settings_per_role() -> None:
    assert BillingSettings.from_env({}).api_limits == DEFAULT_LIMITS
    given = BillingSettings.from_env(
        {"STREAMTOLL_API_LIMITS_PARTNER": "rate=1/s,concurrent=1", "STREAMTOLL_API_LIMITS_FINANCE": "off"}
    )
    assert given.api_limits == {"partner": Limit(1.0, 30, 1), "finance": None, "ops": DEFAULT_LIMITS["ops"]}
    with pytest.raises(BillingSettingsError) as exc:
        BillingSettings.from_env({"STREAMTOLL_API_LIMITS_OPS": "burst=lots", "STREAMTOLL_API_LIMITS_PARTNER": "x=1"})
    assert len(exc.value.problems) == 2
    assert exc.value.problems[0].startswith("STREAMTOLL_API_LIMITS_PARTNER: 'x=1' is not")
    assert exc.value.problems[1].startswith("STREAMTOLL_API_LIMITS_OPS: burst='lots' must be")
