"""Ops views on the real pipeline: two metering workers, the sink and the API on one real broker
and a real PostgreSQL. The live view must show the sum over both workers, equal to a ground
truth computed from the generated traffic; the metrics must count what was produced; the page
must show it in a real Chromium and update by itself; ``streamtoll top`` must print it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from billing.adapters.live_feed import LiveFeed, LiveSources
from billing.api.models import LiveView
from billing.domain.accounts import UNASSIGNED
from billing.services.live import read_base
from billing.services.live_view import LiveBoard
from metering.settings import MeteringSettings
from streamtoll.dev.traffic import BAD_PROXY, rfc3339
from streamtoll.embedded import EmbeddedBroker, free_port
from streamtoll.serving import running

from .conftest import isolated_env
from .harness import Worker, produce, wait_caught_up
from .webdriver import chromium

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).parents[2] / "streamtoll" / "samples"
# principal → the account the sample client rules give it
PRINCIPALS = {
    "User:acme-web": "acme",
    "User:acme-etl": "acme",
    "User:globex-analytics": "globex",
    "User:initech-ops": "initech",
    "User:nobody": UNASSIGNED,
}


@dataclass
class Truth:
    """Expected usage per (account, principal, client id, direction, minute): [bytes, records]."""

    usage: dict[tuple[str, str, str, str, int], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    counted: int = 0
    duplicates: int = 0
    dlq: Counter[str] = field(default_factory=Counter)
    bytes_by_direction: Counter[str] = field(default_factory=Counter)

    def totals(self, since: float, until: float = float("inf")) -> dict[tuple[str, str, str, str], list[int]]:
        """(account, principal, client id, direction) → [bytes, records] over minutes in [since, until)."""
        out: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for (acct, p, c, d, minute), (b, r) in self.usage.items():
            if since <= minute < until:
                out[(acct, p, c, d)][0] += b
                out[(acct, p, c, d)][1] += r
        return out


def make_traffic(topic: str, truth: Truth, n: int, seed: int, bad: int = 0) -> list[tuple[str, bytes, bytes]]:
    """Proxy audit records from the last ten minutes (today, UTC), with retries and bad records."""
    rnd = random.Random(seed)
    now = time.time()
    since = max(now - 600, now - now % 86400)
    records: list[tuple[str, bytes, bytes]] = []
    for i in range(n):
        principal = rnd.choice(list(PRINCIPALS))
        client = rnd.choice(("web-1", "etl-2"))
        t = rnd.uniform(since, now - 1)
        direction = rnd.choice(("produce", "consume"))
        nbytes, nrec = rnd.randint(100, 500_000), rnd.randint(1, 2000)
        doc = {
            "specversion": "1.0",
            "id": f"{seed}-{i}",
            "source": "//proxy/gw-1",
            "type": "io.streamtoll.kafka.produce" if direction == "produce" else "io.streamtoll.kafka.fetch",
            "time": rfc3339(t),
            "subject": principal,
            "data": {
                "client_id": client,
                "topic": rnd.choice(("orders", "payments")),
                "records": nrec,
                "bytes": nbytes,
            },
        }
        value = json.dumps(doc).encode()
        records.append((topic, principal.encode(), value))
        minute = int(t) - int(t) % 60
        row = truth.usage[(PRINCIPALS[principal], principal, client, direction, minute)]
        row[0] += nbytes
        row[1] += nrec
        truth.counted += 1
        truth.bytes_by_direction[direction] += nbytes
        if rnd.random() < 0.05:  # the proxy retried: the same record again
            records.append((topic, principal.encode(), value))
            truth.duplicates += 1
    for raw, reason in BAD_PROXY[:bad]:
        records.append((topic, b"User:nobody", raw))
        truth.dlq[reason] += 1
    return records


@dataclass
class Pipeline:
    broker: EmbeddedBroker
    settings: MeteringSettings
    env: dict[str, str]
    base: str
    ops_key: str
    finance_key: str
    worker_metrics: list[str]
    sink_metrics: str
    truth: Truth
    feed: LiveFeed
    logdir: Path

    def feed_traffic(self, n: int, seed: int, bad: int = 0) -> None:
        records = make_traffic(self.settings.topic_proxy_audit, self.truth, n, seed, bad)
        ends = produce(self.broker.bootstrap, records)
        wait_caught_up(self.broker.bootstrap, self.settings.group_id, ends)

    def live(self) -> dict[str, Any]:
        r = httpx.get(self.base + "/v1/live", headers={"Authorization": f"Bearer {self.ops_key}"}, timeout=30)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        LiveView.model_validate(doc)  # the answer is what the OpenAPI document says
        return doc


def _env(broker: EmbeddedBroker, database: str) -> dict[str, str]:
    env = {**isolated_env(broker.bootstrap), "STREAMTOLL_DATABASE_URL": database}
    base = env["STREAMTOLL_TOPIC_PROXY_AUDIT"].removesuffix(".proxy-audit")
    env["STREAMTOLL_TOPIC_ENFORCEMENT"] = f"{base}.enforcement"
    env["STREAMTOLL_TOPIC_ENFORCEMENT_EVENTS"] = f"{base}.enforcement-events"
    return env


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a /metrics page: (name, sorted labels) → value."""
    text_ = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text_)
        for s in fam.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, v_) in ls for k, v_ in labels.items()))


@pytest.fixture(scope="module")
def pipeline(
    broker: EmbeddedBroker, module_catalog: tuple[str, sa.Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    from billing.api.app import create_app
    from billing.services.keys import create_key

    logdir = tmp_path_factory.mktemp("live")
    url, engine = module_catalog
    env = _env(broker, url)
    settings = MeteringSettings.from_env(env)
    ports = [free_port() for _ in range(3)]
    workers = [
        Worker(
            {**env, "STREAMTOLL_INSTANCE_ID": f"w{i}", "STREAMTOLL_METRICS_BIND": f"127.0.0.1:{ports[i]}"},
            logdir / f"worker{i}.log",
        ).start()
        for i in range(2)
    ]
    sink_log = open(logdir / "sink.log", "ab")  # noqa: SIM115
    sink = subprocess.Popen(
        [sys.executable, "-m", "streamtoll.cli", "sink", "--metrics-bind", f"127.0.0.1:{ports[2]}"],
        env=env,
        stdout=sink_log,
        stderr=sink_log,
        start_new_session=True,
    )
    sources = LiveSources(
        settings.kafka_config(),
        settings.topic_usage_minutes,
        settings.topic_dlq,
        tuple(settings.input_topics),
        settings.group_id,
        topic_enforcement=settings.topic_enforcement,
        topic_enforcement_events=settings.topic_enforcement_events,
    )
    feed = LiveFeed(
        sources,
        LiveBoard(),
        lambda now, rated: read_base(engine, now, rated),
        lag_every_s=1.0,
        db_refresh_s=2.0,
        rate_every_s=2.0,
    ).start()
    try:
        with running(create_app(engine, live=feed)) as base:
            pipe = Pipeline(
                broker,
                settings,
                env,
                base,
                create_key(engine, "ops", None),
                create_key(engine, "finance", None),
                [f"http://127.0.0.1:{p}/metrics" for p in ports[:2]],
                f"http://127.0.0.1:{ports[2]}/metrics",
                Truth(),
                feed,
                logdir,
            )
            # both workers hold input partitions before traffic starts: the view must add them up
            deadline = time.monotonic() + 90
            while True:
                try:
                    owned = [total(scrape(u), "streamtoll_metering_partitions_owned") for u in pipe.worker_metrics]
                except httpx.HTTPError:
                    owned = [0.0, 0.0]
                if all(owned) and sum(owned) == 12:
                    break
                if time.monotonic() > deadline:
                    logs = "\n".join((logdir / f"worker{i}.log").read_text()[-1500:] for i in range(2))
                    raise AssertionError(f"workers own {owned} of 12 partitions\n{logs}")
                time.sleep(0.5)
            pipe.feed_traffic(3000, seed=1, bad=4)
            yield pipe
    finally:
        feed.stop()
        for w in workers:
            w.stop()
        sink.terminate()
        sink.wait(30)


def _client_totals(doc: dict[str, Any], period: str) -> dict[tuple[str, str, str, str], list[int]]:
    out: dict[tuple[str, str, str, str], list[int]] = {}
    for acct in doc["accounts"] + ([doc["unassigned"]] if doc["unassigned"] else []):
        for c in acct["clients"]:
            for d in ("produce", "consume"):
                q = c[period][d]
                if q["bytes"] or q["records"]:
                    out[(acct["account"], c["principal"], c["client_id"], d)] = [q["bytes"], q["records"]]
    return out


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _wait_for_truth(pipe: Pipeline, timeout: float = 90) -> dict[str, Any]:
    """The live view once its today's totals equal the truth (the feed and sink catch up)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = pipe.live()
        now = _at(doc["generated_at"])
        want = {k: v for k, v in pipe.truth.totals(now - now % 86400).items() if any(v)}
        got = _client_totals(doc, "day_to_date")
        # lag is sampled every second and the rated amounts follow the sink and a database
        # refresh: wait for those too, so every part of the view describes the same traffic
        settled = all(p["records_behind"] == 0 for p in doc["lag"]) and all(a["rated_so_far"] for a in doc["accounts"])
        if got == want and settled and doc["lag"]:
            return doc
        if time.monotonic() > deadline:
            diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            raise AssertionError(
                f"live view differs from the truth for {len(diff)} clients, e.g. {list(diff.items())[:3]}; "
                f"lag {doc['lag']}; rated {[(a['account'], a['rated_so_far']) for a in doc['accounts']]}"
            )
        time.sleep(0.5)


def test_live_view_is_the_sum_over_both_workers(pipeline: Pipeline) -> None:
    doc = _wait_for_truth(pipeline)
    # the current hour and the last complete minute, from the same truth, at the view's time
    generated = _at(doc["generated_at"])
    hour0 = generated - generated % 3600
    assert _client_totals(doc, "hour_to_date") == {k: v for k, v in pipeline.truth.totals(hour0).items() if any(v)}
    minute0 = _at(doc["minute"]["start"])
    rates = {k: [v[0] / 60, v[1] / 60] for k, v in pipeline.truth.totals(minute0, minute0 + 60).items()}
    for acct in doc["accounts"] + [doc["unassigned"]]:
        for c in acct["clients"]:
            for d in ("produce", "consume"):
                want = rates.get((acct["account"], c["principal"], c["client_id"], d), [0, 0])
                r = c["rate"][d]
                assert [r["bytes_per_s"], r["messages_per_s"]] == pytest.approx(want)
    # unassigned traffic is shown apart; accounts with a plan have a rated amount so far
    assert doc["unassigned"]["account"] == UNASSIGNED
    assert {a["account"] for a in doc["accounts"]} == {"acme", "globex", "initech"}
    acme = next(a for a in doc["accounts"] if a["account"] == "acme")
    assert acme["rated_so_far"]["currency"] == "EUR" and float(acme["rated_so_far"]["total"]) >= 100
    # both workers did part of it
    counted = [total(scrape(u), "streamtoll_events_in_total", outcome="counted") for u in pipeline.worker_metrics]
    assert all(counted) and sum(counted) == pipeline.truth.counted
    # DLQ and lag
    assert doc["dlq"]["today"] == dict(pipeline.truth.dlq)
    assert doc["lag"] and all(p["records_behind"] == 0 for p in doc["lag"])
    assert {(p["topic"], p["partition"]) for p in doc["lag"]} == {
        (t, p) for t in pipeline.settings.input_topics for p in range(4)
    }


def test_live_view_needs_an_ops_or_finance_key(pipeline: Pipeline) -> None:
    from billing.services.keys import create_key

    engine = sa.create_engine(pipeline.env["STREAMTOLL_DATABASE_URL"])
    partner = create_key(engine, "partner", "acme")
    engine.dispose()
    url = pipeline.base + "/v1/live"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {partner}"}, timeout=10).status_code == 403
    assert httpx.get(url, headers={"Authorization": f"Bearer {pipeline.finance_key}"}, timeout=10).status_code == 200
    # an ops key reads nothing but the live view
    ops = {"Authorization": f"Bearer {pipeline.ops_key}"}
    assert httpx.get(pipeline.base + "/v1/invoices", headers=ops, timeout=10).status_code == 403
    page = httpx.get(pipeline.base + "/live", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "acme" not in page.text


def test_metrics_count_what_was_produced(pipeline: Pipeline) -> None:
    _wait_for_truth(pipeline)
    workers = [scrape(u) for u in pipeline.worker_metrics]

    def both(name: str, **labels: str) -> float:
        return sum(total(w, name, **labels) for w in workers)

    truth = pipeline.truth
    assert both("streamtoll_events_in_total", source="proxy", outcome="counted") == truth.counted
    assert both("streamtoll_dedup_hits_total", source="proxy") == truth.duplicates
    for reason, n in truth.dlq.items():
        assert both("streamtoll_dlq_records_total", reason=reason) == n
    for direction, n in truth.bytes_by_direction.items():
        assert both("streamtoll_metered_bytes_total", source="proxy", direction=direction) == n
    assert both("streamtoll_windows_published_total") > 0
    assert both("streamtoll_metering_partitions_owned") == 12
    sink = scrape(pipeline.sink_metrics)
    assert total(sink, "streamtoll_sink_upserts_total") > 0
    assert total(sink, "streamtoll_sink_database_up") == 1
    api = scrape(pipeline.base + "/metrics")
    lag = {ls: v for (n, ls), v in api.items() if n == "streamtoll_metering_lag_records"}
    assert len(lag) == 12 and not any(lag.values())
    assert total(api, "streamtoll_dlq_records_today") == sum(truth.dlq.values())
    assert total(api, "streamtoll_live_minutes_applied_total") > 0
    assert total(api, "streamtoll_live_kafka_up") == 1
    health = httpx.get(pipeline.base + "/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "live": True,
        "ready": True,
        "database": "reachable",
        "kafka": "reachable",
    }


def test_grafana_dashboard_uses_only_exported_metrics(pipeline: Pipeline) -> None:
    import re

    families: set[str] = set()  # exported even before their first sample (e.g. no billing run yet)
    for url in [*pipeline.worker_metrics, pipeline.sink_metrics, pipeline.base + "/metrics"]:
        for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            families.add(fam.name)
    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "streamtoll.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    for expr in exprs:
        used = set(re.findall(r"\b(?:streamtoll|process)_[a-z_]+", expr))
        assert used, expr
        for metric in used:
            if metric.startswith("streamtoll_gateway_"):
                continue  # the gateway's: checked against a real gateway in test_enforcement.py
            # a counter's or histogram's samples are named after their family with a suffix
            family = re.sub(r"_(total|bucket|count|sum)$", "", metric)
            assert family in families, f"{metric} in {expr!r} is not exported"


def test_top_prints_the_live_tables(pipeline: Pipeline) -> None:
    doc = _wait_for_truth(pipeline)
    out = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "top", "--once", "--url", pipeline.base],
        env={**pipeline.env, "STREAMTOLL_API_KEY": pipeline.ops_key, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for acct in doc["accounts"]:
        line = next(line for line in out.stdout.splitlines() if f" {acct['account']} " in line)
        assert acct["rated_so_far"]["total"] in line
    assert "unassigned" in out.stdout and "metering lag" in out.stdout and "DLQ" in out.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "top", "--once", "--url", pipeline.base, "--key", "stk_x_y"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "refused" in refused.stderr


def test_live_page_in_chromium_updates_by_itself(pipeline: Pipeline) -> None:
    _wait_for_truth(pipeline)
    cell = 'document.querySelector(\'#accounts tr[data-account="{}"] td[data-field="day_bytes"]\')?.dataset.value'

    def shown(account: str) -> str:
        return f"return {cell.format(account)}"

    def want(account: str) -> int:
        now = time.time()
        return sum(v[0] for k, v in pipeline.truth.totals(now - now % 86400).items() if k[0] == account)

    with chromium() as browser:
        browser.open(f"{pipeline.base}/live?every=1#key={pipeline.ops_key}")
        browser.wait("return Number(document.body.dataset.updates || 0) >= 2", what="two refreshes")
        for account in ("acme", "globex", "initech", UNASSIGNED):
            assert int(browser.wait(shown(account), what=account)) == want(account)
        assert browser.js("return location.hash") == ""  # the key does not stay in the address bar
        before = int(browser.js(shown("acme")))
        pipeline.feed_traffic(1500, seed=2, bad=2)
        expected = want("acme")
        assert expected > before
        browser.wait(f"return Number({cell.format('acme')}) === {expected}", timeout=90, what="acme's new total")
        rows = browser.js("return [...document.querySelectorAll('#dlq tbody tr')].map(r => r.dataset.reason)")
        assert set(rows) == set(pipeline.truth.dlq)
        assert browser.js("return document.querySelectorAll('#dlq tr.bad').length") >= 1  # DLQ highlighted
        # sorting: clicking "account" orders the rows by name
        browser.js("document.querySelector('#accounts th[data-sort=\"account\"]').click()")
        order = browser.js("return [...document.querySelectorAll('#accounts tbody tr')].map(r => r.dataset.account)")
        assert order == sorted(order)
        shot = browser.screenshot()
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / "live-page.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000


def test_throttled_and_blocked_accounts_show_in_the_json_the_page_and_top(pipeline: Pipeline) -> None:
    """A cap's block decision (and the gateway episode applying it), a rate limit's throttle at
    two gateways and an episode that ended, published to their topics as the caps fold and the
    gateways publish them: ``/v1/live``, the page (in Chromium) and ``streamtoll top`` show who is
    held back now, since when, for how long and why; ending them moves them to the last hour."""
    from confluent_kafka import Producer

    from billing.adapters.control import ensure_compacted_topic
    from metering.entitlements import (
        Decision,
        Episode,
        decision_key,
        encode_decision,
        encode_episode,
        month_of,
    )

    settings = pipeline.settings
    config = {"bootstrap.servers": pipeline.broker.bootstrap}
    for topic in (settings.topic_enforcement, settings.topic_enforcement_events):
        ensure_compacted_topic(config, topic, 1)
    producer = Producer(config)

    def publish(topic: str, key: bytes, value: bytes) -> None:
        producer.produce(topic, value, key)
        assert producer.flush(10) == 0

    now = datetime.now(UTC).replace(microsecond=0)
    since = now - timedelta(minutes=12)
    block = Decision("acme", "produce_bytes", month_of(now), "block", 1_000_123, 1_000_000, since, since)
    publish(settings.topic_enforcement, decision_key("acme", "produce_bytes"), encode_decision(block))
    stale = Decision("globex", "produce_bytes", "2020-01", "block", 5, 1, since, since)  # another month's
    publish(settings.topic_enforcement, decision_key("globex", "produce_bytes"), encode_decision(stale))

    def episode(gw: str, account: str, kind: str, cause: str, started: datetime, **kw: Any) -> Episode:
        direction = kw.pop("direction", "produce")
        eid = f"{gw}/{account}/{kind}/{direction}/{int(started.timestamp() * 1000)}"
        return Episode(eid, gw, account, kind, direction, cause, kw.pop("reason", "r"), started, now, **kw)  # type: ignore[arg-type]

    episodes = [
        episode("gw-1", "acme", "block", "cap", since + timedelta(seconds=5), meter="produce_bytes", requests=40),
        episode(
            "gw-1",
            "initech",
            "throttle",
            "quota",
            now - timedelta(minutes=3),
            direction="consume",
            reason="consume_bytes_per_second 50000 exceeded",
            limit=50_000,
            held_seconds=12.5,
            requests=7,
        ),
        episode(
            "gw-2",
            "initech",
            "throttle",
            "quota",
            now - timedelta(minutes=2),
            direction="consume",
            reason="consume_bytes_per_second 50000 exceeded",
            limit=50_000,
            held_seconds=2.0,
            requests=3,
        ),
        episode("gw-2", "globex", "throttle", "quota", now - timedelta(minutes=30), ended=now - timedelta(minutes=20)),
    ]
    for e in episodes:
        publish(settings.topic_enforcement_events, e.id.encode(), encode_episode(e))

    deadline = time.monotonic() + 60
    while len((doc := pipeline.live())["enforcement"]["in_force"]) < 2 or not doc["enforcement"]["ended_last_hour"]:
        assert time.monotonic() < deadline, doc["enforcement"]
        time.sleep(0.5)
    in_force = {(e["account"], e["kind"]): e for e in doc["enforcement"]["in_force"]}
    assert set(in_force) == {("acme", "block"), ("initech", "throttle")}  # globex's block is another month's
    acme = in_force[("acme", "block")]
    assert (acme["cause"], acme["meter"], acme["direction"], acme["reason"]) == (
        "cap",
        "produce_bytes",
        "produce",
        block.reason,
    )
    assert (acme["since"], acme["used"], acme["included"], acme["gateways"], acme["requests"]) == (
        since.isoformat().replace("+00:00", ".000Z"),
        1_000_123,
        1_000_000,
        ["gw-1"],
        40,
    )
    assert 12 * 60 <= acme["seconds"] < 12 * 60 + 60
    initech = in_force[("initech", "throttle")]  # one row over both gateways
    assert (initech["cause"], initech["direction"], initech["limit"], initech["gateways"]) == (
        "quota",
        "consume",
        50_000,
        ["gw-1", "gw-2"],
    )
    assert (initech["requests"], initech["held_seconds"]) == (10, 14.5)
    assert 180 <= initech["seconds"] < 240  # since the first gateway's episode
    assert [(e["account"], e["seconds"]) for e in doc["enforcement"]["ended_last_hour"]] == [("globex", 600.0)]
    api = scrape(pipeline.base + "/metrics")  # Prometheus: how many accounts are held, no names
    assert total(api, "streamtoll_accounts_held", kind="block", cause="cap") == 1
    assert total(api, "streamtoll_accounts_held", kind="throttle", cause="quota") == 1
    assert total(api, "streamtoll_accounts_held", kind="throttle", cause="cap") == 0

    out = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "top", "--once", "--url", pipeline.base],
        env={**pipeline.env, "STREAMTOLL_API_KEY": pipeline.ops_key, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "throttled and blocked now" in out.stdout
    acme_line = next(line for line in out.stdout.splitlines() if " acme " in line and " block " in line)
    assert "produce_bytes" in acme_line and "12 min" in acme_line
    initech_line = next(line for line in out.stdout.splitlines() if " initech " in line and " throttle " in line)
    assert "50.00 kB/s" in initech_line and "consume" in initech_line

    row = "document.querySelector('#enforcement tr[data-account=\"{}\"]')?.dataset.kind"
    with chromium() as browser:
        browser.open(f"{pipeline.base}/live?every=1#key={pipeline.ops_key}")
        assert browser.wait(f"return {row.format('acme')}", what="acme's block") == "block"
        assert browser.wait(f"return {row.format('initech')}", what="initech's throttle") == "throttle"
        badge = "return document.querySelector('#accounts tr[data-account=\"acme\"] .badge')?.textContent"
        assert browser.js(badge) == "blocked"
        assert browser.js("return document.getElementById('enforcement-none').hidden") is True
        ended = "return [...document.querySelectorAll('#enforcement-ended tbody tr')].map(r => r.dataset.account)"
        assert browser.js(ended) == ["globex"]
        Path("out").mkdir(exist_ok=True)
        (Path("out") / "live-page-enforcement.png").write_bytes(browser.screenshot())
        # the block is lifted and the throttles end: the page follows by itself
        lifted = Decision("acme", "produce_bytes", month_of(now), "ok", 1_000_123, 2_000_000, since, now)
        publish(settings.topic_enforcement, decision_key("acme", "produce_bytes"), encode_decision(lifted))
        later = datetime.now(UTC)
        for e in episodes[:3]:
            done = replace(e, ended=later, updated=later)
            publish(settings.topic_enforcement_events, e.id.encode(), encode_episode(done))
        browser.wait("return !document.getElementById('enforcement-none').hidden", timeout=60, what="none in force")
        assert sorted(browser.js(ended)) == ["acme", "globex", "initech", "initech"]
        assert browser.js(badge) is None
    doc = pipeline.live()
    assert doc["enforcement"]["in_force"] == []
    assert doc["enforcement"]["ended_last_hour"][-1]["account"] == "globex"  # newest first
    assert total(scrape(pipeline.base + "/metrics"), "streamtoll_accounts_held") == 0
