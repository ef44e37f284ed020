"""The statement read model on a real PostgreSQL: a stored statement is served only while it is
what computing it afresh would give (or, for a bounded time, while it is being refreshed)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.services import statements
from billing.services.catalog import load_accounts
from billing.services.statements import StatementStore, statement

from .seed import GB, w

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).parents[2] / "streamtoll" / "samples"


def fresh(engine: sa.Engine, account: str = "acme", period: str = "2026-11") -> dict[str, Any]:
    return statement(engine, account, period)


def same(stored: bytes, computed: dict[str, Any]) -> bool:
    """Equal but for when each was computed."""
    a = orjson.loads(stored)
    for doc in (a, computed):
        doc.pop("as_of"), doc.pop("to")
    return bool(a == computed)


def proxy_bytes(body: bytes) -> int:
    doc = orjson.loads(body)
    return sum(r["bytes"] for r in doc["totals"] if r["source"] == "proxy" and r["direction"] == "produce")


def test_served_as_stored_until_usage_of_its_month_changes(engine: sa.Engine) -> None:
    store = StatementStore(engine, max_staleness=0)
    first = store.get("acme", "2026-11")
    assert same(first, fresh(engine)) and store.served["computed"] == 1
    assert store.get("acme", "2026-11") == first and store.served["stored"] == 1
    # usage of another month, and a replay the sink does not write: nothing to recompute
    upsert_windows(engine, [w(3, 10, "proxy", "User:acme-orders", "produce", "orders", b=GB, month=10)])
    upsert_windows(engine, [w(3, 10, "proxy", "User:acme-orders", "produce", "orders", b=1000 * GB, r=20_000_000)])
    assert store.get("acme", "2026-11") == first and store.served == {"stored": 2, "stale": 0, "computed": 1}
    # a newer version of one of acme's November windows
    upsert_windows(
        engine, [w(3, 10, "proxy", "User:acme-orders", "produce", "orders", b=1001 * GB, r=20_000_001, version=2)]
    )
    second = store.get("acme", "2026-11")
    assert proxy_bytes(second) == proxy_bytes(first) + GB and same(second, fresh(engine))
    assert store.served["computed"] == 2
    # a deleted row moves the mark too
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM usage_shard_rows WHERE hour = '2026-11-03 11:00+00'"))
    third = store.get("acme", "2026-11")
    assert proxy_bytes(third) == proxy_bytes(second) - 250 * GB and same(third, fresh(engine))


def test_catalog_change_is_never_served_stale(engine: sa.Engine, tmp_path: Path) -> None:
    store = StatementStore(engine, max_staleness=3600)
    before = orjson.loads(store.get("acme", "2026-11"))
    assert before["rated_so_far"]["tax"] != "0.00"
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text((SAMPLES / "accounts.yaml").read_text().replace('tax_rate: "0.19"', 'tax_rate: "0.00"', 1))
    load_accounts(engine, accounts)
    after = orjson.loads(store.get("acme", "2026-11"))
    assert (
        after["rated_so_far"]["tax"] == "0.00" and after["rated_so_far"]["total"] == after["rated_so_far"]["subtotal"]
    )


def test_stale_statement_served_while_one_refresh_runs(engine: sa.Engine) -> None:
    store = StatementStore(engine, max_staleness=3600)
    first = store.get("acme", "2026-11")
    upsert_windows(engine, [w(9, 1, "proxy", "User:acme-orders", "produce", "orders", b=7 * GB)])
    # at once: the stored one (marked as of when it was computed), and a refresh starts
    assert store.get("acme", "2026-11") == first and store.served["stale"] == 1
    deadline = time.monotonic() + 30
    while store.served["stored"] == 0 and time.monotonic() < deadline:
        latest = store.get("acme", "2026-11")
        if latest != first:
            break
        time.sleep(0.05)
    assert proxy_bytes(latest) == proxy_bytes(first) + 7 * GB and same(latest, fresh(engine))
    assert store.get("acme", "2026-11") == latest  # current again: stored


def test_change_committed_while_computing_is_not_taken_for_current(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marks are read before the statement is computed: a change that commits in between
    (after the marks, but possibly before or after the usage read) leaves the stored statement
    out of date, never wrongly current."""
    real = statements.statement
    changed = threading.Event()

    def racing(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if not changed.is_set():
            changed.set()
            upsert_windows(engine, [w(20, 5, "proxy", "User:acme-orders", "produce", "orders", b=3 * GB)])
        return real(*args, **kwargs)

    monkeypatch.setattr(statements, "statement", racing)
    store = StatementStore(engine, max_staleness=0)
    store.get("acme", "2026-11")
    monkeypatch.setattr(statements, "statement", real)
    again = store.get("acme", "2026-11")
    assert store.served["computed"] == 2 and same(again, fresh(engine))


def test_concurrent_requests_compute_once(engine: sa.Engine) -> None:
    store = StatementStore(engine, max_staleness=0)
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(store.get("acme", "2026-11"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(bodies)) == 1 and store.served["computed"] == 1 and store.served["stored"] == 5


def test_open_month_reads_todays_hours(engine: sa.Engine) -> None:
    """The current month: whole days from the daily table, today's hours so far included."""
    now = datetime.now(UTC)
    period = now.strftime("%Y-%m")
    store = StatementStore(engine, max_staleness=0)
    before = store.get("acme", period)
    hour = replace(
        w(1, 0, "proxy", "User:acme-orders", "produce", "orders", b=5 * GB), window_start=f"{now:%Y-%m-%dT%H}:00:00Z"
    )
    upsert_windows(engine, [hour])
    after = store.get("acme", period)
    assert proxy_bytes(after) == proxy_bytes(before) + 5 * GB and same(after, fresh(engine, period=period))
    doc = orjson.loads(after)
    assert doc["from"] == f"{period}-01T00:00:00Z" and doc["to"] == doc["as_of"]


class Renderer:
    """A stand-in for WeasyPrint (ours to fake): the document's bytes, counted; ``during`` runs
    inside the first rendering."""

    def __init__(self, during: Any = None) -> None:
        self.calls = 0
        self.during = during
        self._lock = threading.Lock()

    def __call__(self, doc: dict[str, Any]) -> bytes:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first and self.during is not None:
            self.during()
        time.sleep(0.05)  # long enough for concurrent requests to meet
        return b"%PDF " + orjson.dumps(doc)


def stored_pdf(engine: sa.Engine) -> bytes | None:
    with engine.connect() as conn:
        pdf = conn.execute(
            sa.text("SELECT pdf FROM statement_docs WHERE account = 'acme' AND period = '2026-11'")
        ).scalar()
    return None if pdf is None else bytes(pdf)


def test_pdf_rendered_once_per_stored_statement(engine: sa.Engine) -> None:
    store = StatementStore(engine, max_staleness=0)
    render = Renderer()
    first = store.pdf("acme", "2026-11", render)
    assert first == b"%PDF " + store.get("acme", "2026-11") and stored_pdf(engine) == first
    assert store.pdf("acme", "2026-11", render) == first and render.calls == 1
    assert store.pdfs == {"stored": 1, "rendered": 1}
    # another API process (a new store) serves the stored bytes too
    assert StatementStore(engine, max_staleness=0).pdf("acme", "2026-11", render) == first and render.calls == 1
    # new usage: a new statement, so a new PDF — of the new body
    upsert_windows(engine, [w(9, 1, "proxy", "User:acme-orders", "produce", "orders", b=7 * GB)])
    second = store.pdf("acme", "2026-11", render)
    assert render.calls == 2 and second != first and proxy_bytes(second[5:]) == proxy_bytes(first[5:]) + 7 * GB
    assert second == b"%PDF " + store.get("acme", "2026-11") == b"%PDF " + store.get("acme", "2026-11")


def test_concurrent_pdf_requests_render_once(engine: sa.Engine) -> None:
    store = StatementStore(engine, max_staleness=0)
    render = Renderer()
    pdfs: list[bytes] = []
    threads = [threading.Thread(target=lambda: pdfs.append(store.pdf("acme", "2026-11", render))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pdfs) == 8 and len(set(pdfs)) == 1 and render.calls == 1
    assert store.pdfs == {"stored": 7, "rendered": 1} and store.served["computed"] == 1
    assert len(store._locks) == 0  # no lock kept once nobody waits


def test_a_pdf_of_a_replaced_statement_is_not_stored(engine: sa.Engine) -> None:
    """The statement is recomputed while its PDF renders: that PDF is served to its request (it
    is of the body that request read) but never stored next to the newer body."""
    store = StatementStore(engine, max_staleness=0)
    other = StatementStore(engine, max_staleness=0)  # another API process

    def recompute() -> None:
        upsert_windows(engine, [w(12, 3, "proxy", "User:acme-orders", "produce", "orders", b=2 * GB)])
        other.get("acme", "2026-11")

    render = Renderer(during=recompute)
    old = store.pdf("acme", "2026-11", render)
    assert stored_pdf(engine) is None
    new = store.pdf("acme", "2026-11", render)
    assert render.calls == 2 and proxy_bytes(new[5:]) == proxy_bytes(old[5:]) + 2 * GB
    assert stored_pdf(engine) == new == b"%PDF " + store.get("acme", "2026-11")


def test_an_open_episode_whose_gateway_went_silent_is_shown_ended_without_any_change(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from billing.adapters.sink import upsert_episodes
    from billing.services import episodes
    from metering.entitlements import Episode, month_of

    monkeypatch.setattr(episodes, "STALE_AFTER_S", 1.0)  # two minutes in production
    now = datetime.now(UTC)
    period = month_of(now)
    open_ = Episode("gw/acme/block/produce/1", "gw", "acme", "block", "produce", "cap", "cap", now, now)
    upsert_episodes(engine, [open_])
    store = StatementStore(engine, max_staleness=0.5)
    first = store.get("acme", period)
    assert [e["open"] for e in orjson.loads(first)["throttles_and_blocks"]] == [True]
    assert store.get("acme", period) == first and store.served["stored"] == 1  # nothing moved: as stored
    # the gateway reports nothing more (killed): the statement is refreshed anyway and shows it ended
    deadline = time.monotonic() + 30
    while (shown := orjson.loads(store.get("acme", period))["throttles_and_blocks"])[0]["open"]:
        assert time.monotonic() < deadline, "a silent gateway's episode stayed open on the statement"
        time.sleep(0.1)
    assert shown[0]["ended_at"] is not None and datetime.fromisoformat(shown[0]["ended_at"]) <= now + timedelta(
        milliseconds=1
    )
