"""The periodic billing jobs' loop: every job once a round, in order; a failing job is logged
and the others still run; nothing logged when nothing happened; a stop ends it between jobs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from billing.services.jobs import JOBS, Job, Round, run_jobs, run_round
from billing.settings import BillingSettings

T = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)


def test_the_jobs_are_alerts_check_then_webhooks_send() -> None:
    assert [j.name for j in JOBS] == [
        "thresholds check",
        "alerts check",
        "webhooks send",
    ]  # what a round emits, it sends


def test_a_round_runs_every_job_and_a_failure_stops_none_of_the_others() -> None:
    ran: list[tuple[str, Round]] = []

    def job(name: str, line: str = "", fail: bool = False) -> Job:
        def run(engine: Any, r: Round) -> str:
            ran.append((name, r))
            if fail:
                raise RuntimeError("database unreachable")
            return line

        return Job(name, run)

    said: list[str] = []
    jobs = [job("a", "did 2"), job("b", fail=True), job("c")]
    settings = BillingSettings(invoice_number_prefix="ACME")
    outcomes = run_round(None, jobs, settings, said.append, lambda: T)  # type: ignore[arg-type]
    assert [n for n, _ in ran] == ["a", "b", "c"]
    assert all(r == Round(T, settings) for _, r in ran)  # one round: one instant, the settings
    assert ran[0][1].period == "2026-12"
    assert outcomes["a"] == "did 2" and outcomes["c"] == "" and isinstance(outcomes["b"], RuntimeError)
    assert said == [
        "2026-12-07T21:00:00+00:00 a: did 2",
        "2026-12-07T21:00:00+00:00 b: failed: RuntimeError: database unreachable",
    ]  # c had nothing to say


def test_run_jobs_repeats_rounds_until_stopped_and_starts_no_job_after_the_stop() -> None:
    stop = threading.Event()
    rounds: list[str] = []

    def first(engine: Any, r: Round) -> str:
        rounds.append("first")
        if len(rounds) >= 5:  # the third round: stop while it runs
            stop.set()
        return ""

    def second(engine: Any, r: Round) -> str:
        rounds.append("second")
        return ""

    run_jobs(None, 0.01, stop, [Job("first", first), Job("second", second)], None, lambda _: None)  # type: ignore[arg-type]
    assert rounds == ["first", "second", "first", "second", "first"]
