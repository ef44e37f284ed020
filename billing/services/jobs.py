"""The periodic billing jobs (``streamtoll jobs``, and a child of ``streamtoll up``): each round
runs every job of :data:`JOBS` once, in order, then waits ``every`` seconds.

* ``thresholds check``: the current UTC month's threshold invoices (progressive billing,
  :func:`billing.services.progressive.check_thresholds`): those due are issued, finalized and
  rendered; each emits ``invoice.finalized``.
* ``alerts check``: the current UTC month's thresholds (:func:`billing.services.webhooks.check_thresholds`;
  nothing is read while no threshold is active). Only the current month: usage of a past month
  that arrives after it ended is checked by ``streamtoll alerts check --period P``.
* ``webhooks send``: deliver the due webhook deliveries (:func:`billing.services.webhooks.send_pending`),
  last, so what a round's jobs emitted is sent in the same round.

A job is a name and a function of the engine and the round's :class:`Round` (its instant and
the billing settings) returning one line to log (empty: nothing happened, nothing logged);
adding a job is one line in :data:`JOBS` (before ``webhooks send`` if it emits events).
A job that raises is logged and the others still run; the next round tries it again (a database
outage costs rounds, not the process). Stopping (``stop`` set: SIGTERM or Ctrl-C) lets the job
in progress finish and starts no other.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from billing.services import progressive, webhooks
from billing.settings import BillingSettings

__all__ = ["JOBS", "Job", "Round", "run_jobs", "run_round", "said"]


@dataclass(frozen=True)
class Round:
    """What a round's jobs share: when it started (its instant, and its UTC month ``period``)
    and the billing settings (``STREAMTOLL_BILLING_SOURCES``, the invoice number prefix …)."""

    at: datetime
    settings: BillingSettings = field(default_factory=BillingSettings)

    @property
    def period(self) -> str:
        return self.at.astimezone(UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[Engine, Round], str]


def said(items: Sized, what: str) -> str:
    """A job's line for what it did: ``"2 threshold(s) reached"``, or nothing for none."""
    return f"{len(items)} {what}" if len(items) else ""


def _send_webhooks(engine: Engine, r: Round) -> str:
    sent = webhooks.send_pending(engine)
    if not (sent.delivered or sent.retrying or sent.failed):
        return ""
    return f"delivered {sent.delivered}, retrying {sent.retrying}, failed {sent.failed}"


def _check_alerts(engine: Engine, r: Round) -> str:
    crossed = webhooks.check_thresholds(engine, r.period, lambda: r.at, r.settings.source_order)
    return said(crossed, f"threshold(s) reached in {r.period}: {', '.join(t.id for t in crossed)}")


def _check_threshold_invoices(engine: Engine, r: Round) -> str:
    s = r.settings
    issued = progressive.check_thresholds(
        engine, lambda: r.at, r.period, s.invoice_number_prefix, s.issuer, s.source_order
    )
    return said(issued, f"threshold invoice(s) issued: {', '.join(i.number for i in issued)}")


# in order: the jobs that emit events first, then the sender, so a round delivers what it emitted
JOBS: tuple[Job, ...] = (
    Job("thresholds check", _check_threshold_invoices),
    Job("alerts check", _check_alerts),
    Job("webhooks send", _send_webhooks),
)


def run_round(
    engine: Engine,
    jobs: Sequence[Job] = JOBS,
    settings: BillingSettings | None = None,
    say: Callable[[str], None] = print,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: threading.Event | None = None,
) -> dict[str, str | BaseException]:
    """Run each job once (until ``stop`` is set); what each said, or the exception it raised."""
    r = Round(clock(), settings or BillingSettings())
    outcomes: dict[str, str | BaseException] = {}
    for job in jobs:
        if stop is not None and stop.is_set():
            break
        try:
            outcomes[job.name] = line = job.run(engine, r)
        except Exception as exc:  # one job's failure is logged; the others and the next round go on
            outcomes[job.name] = exc
            detail = traceback.format_exception_only(exc)[-1].strip()
            say(f"{r.at.isoformat(timespec='seconds')} {job.name}: failed: {detail}")
            continue
        if line:
            say(f"{r.at.isoformat(timespec='seconds')} {job.name}: {line}")
    return outcomes


def run_jobs(
    engine: Engine,
    every: float,
    stop: threading.Event,
    jobs: Sequence[Job] = JOBS,
    settings: BillingSettings | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """A round every ``every`` seconds (from the start of one to the start of the next, or at
    once when a round took longer) until ``stop`` is set."""
    while not stop.is_set():
        started = datetime.now(UTC)
        run_round(engine, jobs, settings, say, stop=stop)
        took = (datetime.now(UTC) - started).total_seconds()
        stop.wait(max(0.0, every - took))
