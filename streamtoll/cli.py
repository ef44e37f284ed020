"""The ``streamtoll`` command line.

A user's mistake (bad setting, unreachable broker, missing file) ends with one sentence on
stderr saying what to do and exit code 2; never a bare traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import signal
import smtplib
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from billing.settings import BillingSettings, BillingSettingsError
from metering.errors import MeteringError, SettingsError
from metering.settings import MeteringSettings
from streamtoll import logs
from streamtoll.embedded import EmbeddedBroker, EmbeddedError, EmbeddedPostgres

__all__ = ["main"]


class UserError(Exception):
    """A mistake the user can fix; printed as one sentence, exit code 2."""


def _billing_settings() -> BillingSettings:
    try:
        return BillingSettings.from_env()
    except BillingSettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc


@contextlib.contextmanager
def _database(settings: BillingSettings) -> Iterator[str]:
    """The database URL: the setting, or an embedded PostgreSQL under .streamtoll/pg."""
    if settings.database_url:
        yield settings.database_url
        return
    pg = EmbeddedPostgres(Path(".streamtoll") / "pg").start()
    print(f"embedded PostgreSQL at {pg.url}", file=sys.stderr)
    try:
        assert pg.url is not None
        yield pg.url
    finally:
        pg.stop()


@contextlib.contextmanager
def _kafka(settings: MeteringSettings) -> Iterator[MeteringSettings]:
    """Settings with a bootstrap: the setting, or an embedded broker for this process's life."""
    if settings.kafka_bootstrap:
        yield settings
        return
    state = Path(".streamtoll")
    state.mkdir(exist_ok=True)
    broker = EmbeddedBroker(log_path=state / "broker.log").start()
    print(f"embedded Kafka broker (memory storage) at {broker.bootstrap}", file=sys.stderr)
    try:
        # the embedded broker does not expel a static member that died (metering/engine/loop.py)
        yield dataclasses.replace(settings, kafka_bootstrap=broker.bootstrap, static_membership=False)
    finally:
        broker.stop()


def _connect(url: str) -> Engine:
    from billing.adapters.db import make_engine, schema_is_current

    engine = make_engine(url)
    try:
        current = schema_is_current(engine)
    except OperationalError as exc:
        raise UserError(
            f"the database is unreachable ({str(exc).splitlines()[0]}); check STREAMTOLL_DATABASE_URL"
        ) from exc
    if not current:
        raise UserError("the database has no streamtoll schema yet; run `streamtoll db upgrade` first")
    return engine


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from billing.adapters.db import upgrade

    with _database(_billing_settings()) as url:
        try:
            upgrade(url)
        except OperationalError as exc:
            raise UserError(f"the database is unreachable ({str(exc).splitlines()[0]})") from exc
    print("database schema is at the newest revision")
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from billing.adapters.metrics import SinkCollector
    from billing.services.sink import UsageSink

    billing = _billing_settings()
    with _kafka(_settings()) as metering, _database(billing) as url:
        sink = UsageSink(
            _connect(url),
            metering.kafka_config(),
            metering.topic_usage_windows,
            billing.sink_group,
            batch_size=args.batch_size,
            session_timeout_ms=metering.session_timeout_ms,
        )

        def stop(signum: int, frame: FrameType | None) -> None:
            sink.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def health() -> tuple[bool, dict[str, Any]]:
            return sink.db_up, {"database": "reachable" if sink.db_up else "unreachable", "records": sink.records}

        with _metrics(SinkCollector(sink), args.metrics_bind or metering.metrics_bind, health):
            sink.run()
    return 0


def _metrics(collector: Any, bind: str | None, health: Any = None) -> contextlib.AbstractContextManager[int | None]:
    from streamtoll.metrics import serve_metrics

    if bind and not bind.rpartition(":")[2].isdigit():
        raise UserError(f"metrics bind address {bind!r} is not HOST:PORT")
    return serve_metrics(collector, bind, health)


def _catalog_load(kind: str, path: Path) -> int:
    from billing.services.catalog import CatalogError, load_accounts, load_plans

    loader = load_accounts if kind == "accounts" else load_plans
    with _database(_billing_settings()) as url:
        try:
            report = loader(_connect(url), path)
        except CatalogError as exc:
            print(f"streamtoll: {path} was not loaded; nothing changed:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
    for label, names in (("created", report.created), ("updated", report.updated), ("unchanged", report.unchanged)):
        if names:
            print(f"{kind} {label}: {', '.join(names)}")
    return 0


def _day_or_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (2026-11-01) or time (2026-11-01T10:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_usage(args: argparse.Namespace) -> int:
    import csv
    import json

    from billing.services.usage import usage_report

    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    with _database(_billing_settings()) as url:
        try:
            rows = usage_report(_connect(url), args.start, args.end, group_by, args.account)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.csv or rows:
        fields = [*group_by, "bytes", "records", "requests", "denied_requests"]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, delimiter="," if args.csv else "\t")
        writer.writeheader()
        writer.writerows(rows)
    return 0


def _dec(value: Decimal, currency: str) -> str:
    """An amount as the command line prints it: plain, the currency's minor digits (``210.00``)."""
    from billing.domain.money import format_money

    return format_money(value, currency)


def cmd_bill(args: argparse.Namespace) -> int:
    import json

    from billing.services.billing_run import BillingError, run_billing

    billing = _billing_settings()
    with _database(billing) as url:
        try:
            results = run_billing(
                _connect(url),
                args.period,
                args.finalize,
                billing.invoice_number_prefix,
                billing.issuer,
                source_order=billing.source_order,
            )
        except BillingError as exc:
            raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
        return 0
    print(f"{'account':<20} {'status':<18} {'number':<18} {'currency':<8} {'subtotal':>14} {'tax':>12} {'total':>14}")
    for r in results:
        print(
            f"{r.account:<20} {r.status:<18} {r.number or '':<18} {r.currency:<8} {_dec(r.subtotal, r.currency):>14} "
            f"{_dec(r.tax, r.currency):>12} {_dec(r.total, r.currency):>14}"
        )
    return 0


def cmd_invoices(args: argparse.Namespace) -> int:
    import json

    from billing.services.billing_run import BillingError, parse_period
    from billing.services.invoices import InvoiceError, finalize, invoice_pdf, invoice_view, list_invoices, void

    billing = _billing_settings()
    with _database(billing) as url:
        engine = _connect(url)
        try:
            if args.action == "list":
                start = parse_period(args.period)[0] if args.period else None
                rows = list_invoices(engine, start, args.account, args.status)
                if args.json:
                    print(json.dumps(rows, indent=1))
                for r in [] if args.json else rows:
                    print(
                        f"{r['id']:>6} {r['number'] or '(draft)':<18} {r['account']:<16} {r['period_start'][:7]} "
                        f"{r['status']:<10} {r['currency']} {r['total']:>14}"
                    )
            elif args.action == "show":
                print(json.dumps(invoice_view(engine, args.ref), indent=1))
            elif args.action == "finalize":
                ref = args.ref[1:] if args.ref.startswith("#") else args.ref
                if not ref.isdigit():
                    raise UserError("finalize takes a draft's id, like 42 or #42")
                done = finalize(engine, int(ref), billing.invoice_number_prefix, issuer=billing.issuer)
                total = _dec(done.total, done.currency)
                print(f"finalized invoice {done.number} for {done.account_code}: {done.currency} {total}")
            elif args.action == "pdf":
                out = Path(args.out or f"{args.ref}.pdf")
                out.write_bytes(invoice_pdf(engine, args.ref))
                print(f"wrote {out}")
            elif args.action == "send":
                from billing.services.delivery import send_period

                report = send_period(engine, args.period, billing.smtp)
                print(f"queued {report.queued}, sent {report.sent}, failed {report.failed}")
                if report.failed:
                    return 1
            elif args.action == "void":
                void(engine, args.ref, args.reason)
                print(f"voided invoice {args.ref}")
        except (InvoiceError, BillingError) as exc:
            raise UserError(str(exc)) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise UserError(
                f"the mail server did not take the invoices ({exc}); run send again: none is lost"
            ) from None
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from billing.services.keys import KeyError_, create_key, revoke_key

    with _database(_billing_settings()) as url:
        engine = _connect(url)
        try:
            if args.action == "create":
                key = create_key(engine, args.role, args.account)
                print(key)
                print("store it now: it is shown once and kept only as a hash", file=sys.stderr)
            else:
                revoke_key(engine, args.key_id)
                print(f"revoked key {args.key_id}")
        except KeyError_ as exc:
            raise UserError(str(exc)) from None
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from billing.api.app import create_app

    billing = _billing_settings()
    metering = _settings()
    host, _, port = (args.bind or os.environ.get("STREAMTOLL_API_BIND") or "127.0.0.1:8080").rpartition(":")
    if not port.isdigit():
        raise UserError("STREAMTOLL_API_BIND must look like 127.0.0.1:8080")
    with _database(billing) as url:
        engine = _connect(url)
        feed = _live_feed(metering, engine, billing)
        app = create_app(engine, billing, live=feed)
        print(f"streamtoll API on http://{host}:{port} (OpenAPI at /openapi.json)", file=sys.stderr)
        print(f"live page on http://{host}:{port}/live", file=sys.stderr)
        try:
            uvicorn.run(app, host=host, port=int(port), log_level=args.log_level.lower(), access_log=False)
        finally:
            if feed is not None:
                feed.stop()
    return 0


def _live_feed(metering: MeteringSettings, engine: Engine, billing: BillingSettings) -> Any:
    """The live view's feed when a broker is configured (the API alone starts no broker)."""
    from billing.services.live import LiveFeed, LiveSources

    if not metering.kafka_bootstrap:
        print("STREAMTOLL_KAFKA_BOOTSTRAP is unset: /v1/live and /live are off", file=sys.stderr)
        return None
    sources = LiveSources(
        kafka_config=metering.kafka_config(),
        topic_minutes=metering.topic_usage_minutes,
        topic_dlq=metering.topic_dlq,
        input_topics=tuple(metering.input_topics),
        metering_group=metering.group_id,
    )
    return LiveFeed(sources, engine, source_order=billing.source_order).start()


def cmd_top(args: argparse.Namespace) -> int:
    from streamtoll.top import run_top

    key = args.key or os.environ.get("STREAMTOLL_API_KEY")
    if not key:
        raise UserError("give an ops or finance API key with --key or STREAMTOLL_API_KEY")
    url = args.url or "http://" + (os.environ.get("STREAMTOLL_API_BIND") or "127.0.0.1:8080")
    return run_top(url, key, every=args.every, once=args.once)


def cmd_statements(args: argparse.Namespace) -> int:
    import json

    from billing.adapters.render import render_statement_pdf
    from billing.services.billing_run import BillingError
    from billing.services.statements import statement, statement_csv

    billing = _billing_settings()
    with _database(billing) as url:
        try:
            doc = statement(
                _connect(url), args.account, args.period, now=datetime.now(UTC), source_order=billing.source_order
            )
        except BillingError as exc:
            raise UserError(str(exc)) from None
    if args.format == "pdf":
        out = Path(args.out or f"statement-{args.account}-{args.period}.pdf")
        out.write_bytes(render_statement_pdf(doc))
        print(f"wrote {out}")
    else:
        text_ = json.dumps(doc, indent=1) if args.format == "json" else statement_csv(doc)
        if args.out:
            Path(args.out).write_text(text_)
            print(f"wrote {args.out}")
        else:
            print(text_)
    return 0


def _settings() -> MeteringSettings:
    try:
        return MeteringSettings.from_env()
    except SettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc


def cmd_worker(args: argparse.Namespace) -> int:
    from metering.engine import Engine

    # The worker allocates millions of short-lived containers per second and holds large state:
    # frequent young-generation collections would cost it a fifth of its time.
    gc.set_threshold(200_000, 50, 100)
    settings = _settings()
    broker: EmbeddedBroker | None = None
    if not settings.kafka_bootstrap:
        state = Path(".streamtoll")
        state.mkdir(exist_ok=True)
        broker = EmbeddedBroker(log_path=state / "broker.log").start()
        settings = MeteringSettings.from_env({**os.environ, "STREAMTOLL_KAFKA_BOOTSTRAP": broker.bootstrap})
        print(f"embedded Kafka broker (memory storage) at {broker.bootstrap}", file=sys.stderr)
    engine = Engine(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from metering.engine.metrics import EngineCollector

    try:
        with _metrics(EngineCollector(engine), args.metrics_bind or settings.metrics_bind, engine.health) as port:
            if port is not None:
                print(f"worker metrics on port {port} (/metrics)", file=sys.stderr)
            engine.run()
    finally:
        if broker is not None:
            broker.stop()
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    """The Faust live-views worker: usage minutes → one-minute tables (scale by running more)."""
    import faust

    from metering.streams.live import LiveApp

    settings = _settings()
    if not settings.kafka_bootstrap:
        raise UserError("set STREAMTOLL_KAFKA_BOOTSTRAP to the broker the metering worker uses")
    live = LiveApp(settings, store=args.store, web_port=args.web_port)
    worker = faust.Worker(live.app, loglevel=args.log_level.lower())
    worker.execute_from_commandline()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Everything running locally: worker, sink and API as supervised children (streamtoll.up)."""
    from billing.adapters.db import upgrade
    from billing.services.catalog import load_accounts, load_plans
    from billing.services.keys import create_key
    from metering.engine.loop import ensure_topics
    from streamtoll import up

    billing = _billing_settings()
    metering = _settings()
    api_bind = args.bind or os.environ.get("STREAMTOLL_API_BIND") or "127.0.0.1:8080"
    port = api_bind.rpartition(":")[2]
    if not port.isdigit():
        raise UserError("STREAMTOLL_API_BIND must look like 127.0.0.1:8080")
    embedded_kafka, embedded_db = not metering.kafka_bootstrap, not billing.database_url
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with _kafka(metering) as settings, _database(billing) as url:
        try:
            upgrade(url)
        except OperationalError as exc:
            raise UserError(f"the database is unreachable ({str(exc).splitlines()[0]})") from exc
        engine = _connect(url)
        key = None
        if embedded_db:
            with engine.connect() as conn:
                empty = conn.execute(text("SELECT count(*) FROM accounts")).scalar_one() == 0
            if empty:
                load_plans(engine, up.SAMPLES / "plans.yaml")
                load_accounts(engine, up.SAMPLES / "accounts.yaml")
                print("loaded the sample plans and accounts into the embedded database", file=sys.stderr)
            key = create_key(engine, "ops", None)  # a local dev database: a key for the live page
        engine.dispose()
        ensure_topics(settings)
        kids, urls = up.children(settings, url, api_bind, Path(".streamtoll") / "logs")
        supervisor = up.Supervisor(kids)
        supervisor.start()
        watcher = threading.Thread(target=supervisor.watch, args=(sys.stderr,), name="supervisor", daemon=True)
        watcher.start()
        try:
            if not up.wait_healthy(urls["api"]):
                raise UserError(f"the API did not become healthy; see {kids[-1].log_path}")
            traffic = args.traffic if args.traffic is not None else embedded_kafka
            with up.trickle(settings, traffic):
                live = urls["api"] + "/live" + (f"#key={key}" if key else "")
                print("streamtoll is up:", flush=True)
                print(f"  live page    {live}", flush=True)
                if not key:
                    print("               (create a key: streamtoll keys create --role ops)", flush=True)
                print(f"  API          {urls['api']}  (OpenAPI: {urls['api']}/openapi.json)", flush=True)
                print(f"  metrics      {urls['api']}/metrics  {urls['worker_metrics']}  {urls['sink_metrics']}")
                kafka_kind = "embedded, memory storage" if embedded_kafka else "STREAMTOLL_KAFKA_BOOTSTRAP"
                print(f"  Kafka        {settings.kafka_bootstrap}  ({kafka_kind})", flush=True)
                print(f"  PostgreSQL   {'embedded, .streamtoll/pg' if embedded_db else 'STREAMTOLL_DATABASE_URL'}")
                print(f"  logs         {Path('.streamtoll') / 'logs'}/", flush=True)
                if traffic:
                    print("  traffic      a few hundred proxy audit records/s for the sample principals", flush=True)
                print("Ctrl-C stops everything.", flush=True)
                stop.wait()
                print("stopping …", file=sys.stderr, flush=True)
        finally:
            supervisor.stop()
            watcher.join(5)
    print("stopped", file=sys.stderr, flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from billing.services.billing_run import BillingError, parse_period
    from streamtoll.demo import run_demo

    if args.period is not None:
        try:
            parse_period(args.period)
        except BillingError as exc:
            raise UserError(str(exc)) from None
    env = {**os.environ}
    env.setdefault("STREAMTOLL_SESSION_TIMEOUT_MS", "6000")
    env.setdefault("STREAMTOLL_MAX_LATENESS", "70d")  # the billed month's traffic is produced after it
    for name, value in (  # an example issuer on the demo's invoices unless one is configured
        ("ISSUER_NAME", "Example Streaming GmbH"),
        ("ISSUER_ADDRESS", "Example Street 1|10115 Berlin|Germany"),
        ("ISSUER_EMAIL", "billing@streaming.example"),
        ("ISSUER_VAT_ID", "DE000000000"),
        ("ISSUER_BANK", "IBAN DE00 0000 0000 0000 0000 00 · BIC EXAMPDEFF"),
    ):
        env.setdefault("STREAMTOLL_" + name, value)
    try:
        issuer = BillingSettings.from_env(env).issuer
    except BillingSettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc
    try:
        metering = MeteringSettings.from_env(env)
    except SettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc
    with _kafka(metering) as settings, _database(_billing_settings()) as server_url:
        url = _fresh_database(server_url, "streamtoll_demo_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S"))
        print(f"demo database {url.rsplit('/', 1)[-1].split('?')[0]}", flush=True)
        exact = run_demo(settings, url, Path(args.out), args.proxy_events, args.period, args.seed, issuer)
    return 0 if exact else 1


def _fresh_database(server_url: str, name: str) -> str:
    """A new, empty database on the same server, so every demo run starts from nothing."""
    import re

    import sqlalchemy as sa

    if not re.fullmatch(r"[a-z0-9_]{1,63}", name):  # an identifier cannot be a bound parameter
        raise ValueError(f"not a safe database name: {name!r}")
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        raise UserError(f"could not create the demo database ({str(exc).splitlines()[0]})") from exc
    finally:
        admin.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded broker in the foreground (dev helper)."""
    broker = EmbeddedBroker(port=args.port).start()
    print(broker.bootstrap, flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.stop()
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from streamtoll.bench import bench_ingest

    with _kafka(_settings()) as settings:
        assert settings.kafka_bootstrap
        result = bench_ingest(settings.kafka_bootstrap, args.events, args.workers)
    print(result.table())
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from streamtoll.bench import bench_memory

    with _kafka(_settings()) as settings:
        assert settings.kafka_bootstrap
        result = bench_memory(settings.kafka_bootstrap, args.series)
    print(result.table())
    return 0


def cmd_bench_billing(args: argparse.Namespace) -> int:
    from streamtoll.bench_billing import bench_billing

    with _database(_billing_settings()) as server_url:
        url = _fresh_database(server_url, "streamtoll_bench_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S"))
        print(bench_billing(url, args.accounts, args.clients).table())
    return 0


def cmd_bench_api(args: argparse.Namespace) -> int:
    from streamtoll.bench_billing import bench_api

    with _database(_billing_settings()) as server_url:
        url = _fresh_database(server_url, "streamtoll_bench_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S"))
        print(bench_api(url, args.clients, args.requests).table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamtoll", description="Usage metering and billing for Apache Kafka.")
    p.add_argument("--log-level", default=os.environ.get("STREAMTOLL_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="the metering worker; scale by running more")
    w.add_argument("--metrics-bind", default=None, help="HOST:PORT for /metrics (default STREAMTOLL_METRICS_BIND)")
    w.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    db.add_parser("upgrade", help="Alembic migrations to head").set_defaults(func=cmd_db_upgrade)
    sk = sub.add_parser("sink", help="usage windows topic → PostgreSQL")
    sk.add_argument("--batch-size", type=int, default=50_000, help="window records per database transaction")
    sk.add_argument("--metrics-bind", default=None, help="HOST:PORT for /metrics (default STREAMTOLL_METRICS_BIND)")
    sk.set_defaults(func=cmd_sink)
    for kind in ("accounts", "plans"):
        group = sub.add_parser(kind, help=f"{kind} catalog").add_subparsers(dest=f"{kind}_cmd", required=True)
        ld = group.add_parser("load", help=f"load {kind} from a YAML file (idempotent)")
        ld.add_argument("file", type=Path)
        ld.set_defaults(func=lambda a, kind=kind: _catalog_load(kind, a.file))
    us = sub.add_parser("usage", help="usage as the database holds it (finance view)")
    us.add_argument("--from", dest="start", type=_day_or_time, required=True, help="start (inclusive), UTC")
    us.add_argument("--to", dest="end", type=_day_or_time, required=True, help="end (exclusive), UTC")
    us.add_argument("--account", default=None)
    us.add_argument(
        "--group-by",
        default="source,account,direction",
        help="comma list of: "
        + ", ".join(
            ("source", "account", "principal", "client_id", "virtual_cluster", "topic", "direction", "hour", "day")
        ),
    )
    fmt = us.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    us.set_defaults(func=cmd_usage)
    bl = sub.add_parser("bill", help="billing run for a period: drafts (and --finalize)")
    bl.add_argument("--period", required=True, help="YYYY-MM")
    bl.add_argument("--finalize", action="store_true")
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(func=cmd_bill)
    inv = sub.add_parser("invoices", help="invoice lifecycle").add_subparsers(dest="action", required=True)
    il = inv.add_parser("list")
    il.add_argument("--period")
    il.add_argument("--account")
    il.add_argument("--status", choices=("draft", "finalized", "void"))
    il.add_argument("--json", action="store_true")
    ish = inv.add_parser("show")
    ish.add_argument("ref", help="invoice number, or #id for a draft")
    ifn = inv.add_parser("finalize")
    ifn.add_argument("ref", help="draft id")
    ipdf = inv.add_parser("pdf", help="write the stored PDF of a finalized invoice")
    ipdf.add_argument("ref", help="invoice number")
    ipdf.add_argument("--out", default=None, help="file to write (default NUMBER.pdf)")
    isend = inv.add_parser("send", help="email the period's finalized invoices (outbox: never twice, never skipped)")
    isend.add_argument("--period", required=True)
    iv = inv.add_parser("void")
    iv.add_argument("ref", help="invoice number")
    iv.add_argument("--reason", required=True)
    inv_parser = inv
    for p_ in inv_parser.choices.values():
        p_.set_defaults(func=cmd_invoices)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    kc = keys.add_parser("create", help="print a new API key once (stored hashed)")
    kc.add_argument("--account", default=None)
    kc.add_argument("--role", choices=("partner", "finance", "ops"), default="partner")
    kr = keys.add_parser("revoke")
    kr.add_argument("key_id", help="the id part of stk_<id>_<secret>")
    for p_ in (kc, kr):
        p_.set_defaults(func=cmd_keys)
    stm = sub.add_parser("statements", help="a partner's usage statement for a period")
    stm.add_argument("--account", required=True)
    stm.add_argument("--period", required=True, help="YYYY-MM")
    stm.add_argument("--format", choices=("json", "csv", "pdf"), default="json")
    stm.add_argument("--out", default=None)
    stm.set_defaults(func=cmd_statements)
    ap = sub.add_parser("api", help="HTTP server: partner and finance API")
    ap.add_argument("--bind", default=None, help="host:port (default STREAMTOLL_API_BIND or 127.0.0.1:8080)")
    ap.set_defaults(func=cmd_api)
    upp = sub.add_parser("up", help="everything running locally: worker, sink, API and live page")
    upp.add_argument("--bind", default=None, help="API host:port (default STREAMTOLL_API_BIND or 127.0.0.1:8080)")
    tg = upp.add_mutually_exclusive_group()
    tg.add_argument("--traffic", dest="traffic", action="store_true", default=None, help="generate demo traffic")
    tg.add_argument("--no-traffic", dest="traffic", action="store_false", help="no demo traffic")
    upp.set_defaults(func=cmd_up)
    tp = sub.add_parser("top", help="live consumption table in the terminal (reads the API's /v1/live)")
    tp.add_argument("--url", default=None, help="API base URL (default http://STREAMTOLL_API_BIND)")
    tp.add_argument("--key", default=None, help="ops or finance API key (default STREAMTOLL_API_KEY)")
    tp.add_argument("--every", type=float, default=3.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print the tables once and exit")
    tp.set_defaults(func=cmd_top)
    d = sub.add_parser("demo", help="the main job end to end on embedded defaults")
    d.add_argument("--out", default="out")
    d.add_argument("--proxy-events", type=int, default=200_000)
    d.add_argument("--period", default=None, help="YYYY-MM to bill (default: the last complete month)")
    d.add_argument("--seed", type=int, default=7, help="traffic generator seed")
    d.set_defaults(func=cmd_demo)
    lv = sub.add_parser("live", help="the Faust live-views worker (one-minute tables)")
    lv.add_argument("--store", default="memory://", help="Faust table store, e.g. rocksdb://")
    lv.add_argument("--web-port", type=int, default=None)
    lv.set_defaults(func=cmd_live)
    b = sub.add_parser("broker", help="run the embedded dev broker in the foreground")
    b.add_argument("--port", type=int, default=None)
    b.set_defaults(func=cmd_broker)
    bench = sub.add_parser("bench", help="benchmarks (run on demand)").add_subparsers(dest="bench", required=True)
    bi = bench.add_parser("ingest", help="worker throughput on proxy audit records vs. a raw consumer")
    bi.add_argument("--events", type=int, default=1_000_000)
    bi.add_argument("--workers", type=int, default=1)
    bi.set_defaults(func=cmd_bench_ingest)
    bm = bench.add_parser("memory", help="worker RSS holding N live series (window keys)")
    bm.add_argument("--series", type=int, default=100_000)
    bm.set_defaults(func=cmd_bench_memory)
    bb = bench.add_parser("billing", help="a billing run over many accounts with a month of hourly usage")
    bb.add_argument("--accounts", type=int, default=1000)
    bb.add_argument("--clients", type=int, default=1)
    bb.set_defaults(func=cmd_bench_billing)
    ba = bench.add_parser("api", help="p50/p99 of the statement and usage endpoints for one account-month")
    ba.add_argument("--clients", type=int, default=1000)
    ba.add_argument("--requests", type=int, default=200)
    ba.set_defaults(func=cmd_bench_api)
    return p


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    # SIGTERM unwinds like Ctrl-C, so embedded children are stopped by their finally blocks
    # (commands with a graceful stop of their own replace this handler).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return int(args.func(args))
    except (UserError, EmbeddedError, MeteringError) as exc:
        print(f"streamtoll: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
