"""The ``streamtoll`` command line: the composition root of every process.

Conventions (the README's "Command line" section is the user's copy):

* ``--version``; ``--log-level`` before or after the command; ``-h`` on every command and flag.
* Every command that prints data takes ``-o table|json|csv`` (``--json`` / ``--csv`` for short);
  tables are for people, JSON and CSV for programs (``streamtoll.output``).
* Input is checked before anything happens: a bad period or date is refused before a database
  or broker is touched or started.
* The environment is checked first (``streamtoll.environment``): an unknown ``STREAMTOLL_*``
  variable names the closest setting; with ``STREAMTOLL_EMBEDDED=never`` an unset
  ``KAFKA_BOOTSTRAP`` / ``DATABASE_URL`` is an error, otherwise the embedded part that starts
  in its place is logged (WARNING).
* A database whose schema is not this code's head is refused with what to run.
* Mistakes end with one sentence on stderr and an exit code (never a traceback):

  ====  ===============================================================================
  0     done
  1     the command ran but did not fully succeed (mail not sent, demo figures differ)
  2     usage: a bad flag, setting, file or value, or a schema to migrate
  3     not found: no such account, invoice or key
  4     auth: the API refused the key
  5     unavailable: the database, broker or API cannot be reached — retry later
  ====  ===============================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import smtplib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from billing.errors import (
    ApiKeyError,
    BillingSettingsError,
    CatalogError,
    CredentialError,
    CreditNoteError,
    EntitlementError,
    GrantError,
    InvoiceError,
    NotFound,
    ProductError,
    RunError,
    WebhookError,
)
from billing.settings import BillingSettings
from metering.errors import MeteringError, SettingsError
from metering.settings import MeteringSettings, parse_duration
from streamtoll import logs
from streamtoll.embedded import EmbeddedBroker, EmbeddedError, EmbeddedPostgres
from streamtoll.environment import embedded_mode, unknown_settings
from streamtoll.output import FORMATS, print_document, print_rows

__all__ = ["EXIT_CODES", "build_parser", "main"]

log = logging.getLogger("streamtoll")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "the command ran but did not fully succeed",
    EXIT_USAGE: "usage: a bad flag, setting, file or value, or a schema to migrate",
    EXIT_NOT_FOUND: "not found: no such account, invoice or key",
    EXIT_AUTH: "auth: the API refused the key",
    EXIT_UNAVAILABLE: "unavailable: the database, broker or API cannot be reached",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class UserError(Exception):
    """A mistake the user can fix; printed as one sentence with :attr:`exit_code`."""

    exit_code = EXIT_USAGE


class NotFoundError(UserError):
    exit_code = EXIT_NOT_FOUND


class AuthError(UserError):
    exit_code = EXIT_AUTH


class Unavailable(UserError):
    exit_code = EXIT_UNAVAILABLE


def _version() -> str:
    try:
        return version("streamtoll")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


# -- settings and the parts they point at ------------------------------------------------------


def _billing_settings(env: dict[str, str] | None = None) -> BillingSettings:
    try:
        return BillingSettings.from_env(env)
    except BillingSettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc


def _settings(env: dict[str, str] | None = None) -> MeteringSettings:
    try:
        return MeteringSettings.from_env(env)
    except SettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc


def _embedded_allowed(setting: str) -> None:
    if embedded_mode(os.environ) == "never":
        raise UserError(
            f"STREAMTOLL_{setting} is not set and STREAMTOLL_EMBEDDED=never: set it "
            f"(see `streamtoll settings`), or unset STREAMTOLL_EMBEDDED for a dev run"
        )


@contextlib.contextmanager
def _database(settings: BillingSettings) -> Iterator[str]:
    """The database URL: the setting, or an embedded PostgreSQL under .streamtoll/pg."""
    if settings.database_url:
        yield settings.database_url
        return
    _embedded_allowed("DATABASE_URL")
    pg = EmbeddedPostgres(Path(".streamtoll") / "pg").start()
    log.warning(
        "started an embedded PostgreSQL because STREAMTOLL_DATABASE_URL is unset (dev only)",
        extra={"part": "postgresql", "data": str(Path(".streamtoll") / "pg")},
    )
    try:
        assert pg.url is not None
        yield pg.url
    finally:
        pg.stop()


# what the embedded dev broker needs, where the environment does not say otherwise: its group
# coordinator never expels a dead static member (metering/engine/loop.py), and it is fastest
# with few partitions
_EMBEDDED_KAFKA = {"STATIC_MEMBERSHIP": ("static_membership", False), "TOPIC_PARTITIONS": ("topic_partitions", 4)}


@contextlib.contextmanager
def _kafka(settings: MeteringSettings) -> Iterator[MeteringSettings]:
    """Settings with a bootstrap: the setting, or an embedded broker for this process's life."""
    if settings.kafka_bootstrap:
        yield settings
        return
    _embedded_allowed("KAFKA_BOOTSTRAP")
    state = Path(".streamtoll")
    state.mkdir(exist_ok=True)
    broker = EmbeddedBroker(log_path=state / "broker.log").start()
    log.warning(
        "started an embedded Kafka broker (memory storage) because STREAMTOLL_KAFKA_BOOTSTRAP is unset (dev only)",
        extra={"part": "kafka", "bootstrap": broker.bootstrap},
    )
    overrides: dict[str, Any] = {
        attr: value for name, (attr, value) in _EMBEDDED_KAFKA.items() if f"STREAMTOLL_{name}" not in os.environ
    }
    try:
        yield dataclasses.replace(settings, kafka_bootstrap=broker.bootstrap, **overrides)
    finally:
        broker.stop()


def _unreachable(exc: OperationalError) -> Unavailable:
    return Unavailable(f"the database is unreachable ({str(exc).splitlines()[0]}); check STREAMTOLL_DATABASE_URL")


def _connect(url: str) -> Engine:
    """An engine on a database whose schema is exactly this code's (else one sentence)."""
    from billing.adapters.db import make_engine, schema_state

    engine = make_engine(url)
    try:
        state = schema_state(engine)
    except OperationalError as exc:
        raise _unreachable(exc) from exc
    if problem := state.problem():
        raise UserError(problem)
    return engine


@contextlib.contextmanager
def _engine() -> Iterator[Engine]:
    """The billing database of an operator command (embedded where unset and allowed)."""
    with _database(_billing_settings()) as url:
        engine = _connect(url)
        try:
            yield engine
        finally:
            engine.dispose()


# -- argument types: checked while parsing, before anything starts -----------------------------


def _period(text_: str) -> str:
    from billing.services.billing_run import parse_period

    try:
        parse_period(text_)
    except RunError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text_


def _day_or_time(text_: str) -> datetime:
    try:
        value = datetime.fromisoformat(text_)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a date (2026-11-01) or time (2026-11-01T10:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _bind(text_: str) -> str:
    host, _, port = text_.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text_!r} is not HOST:PORT, like 127.0.0.1:8080")
    return text_


def _log_level(text_: str) -> str:
    level = text_.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text_!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _positive(text_: str) -> int:
    if not text_.isdigit() or int(text_) < 1:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a whole number ≥ 1")
    return int(text_)


def _every(text_: str) -> float:
    """A job interval: a duration (``30s``, ``5m``) or seconds, from 1 s to a day."""
    try:
        seconds = float(text_) if text_.replace(".", "", 1).isdigit() else parse_duration(text_)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{text_!r} must be from 1 s to 1 day, e.g. 30 or 5m")
    return seconds


def _invoice_ref(text_: str) -> str:
    """An invoice as paths and commands name it: its number, or ``draft-<id>`` before it has one
    (``#42`` is accepted too, quoted, since an unquoted ``#`` starts a shell comment)."""
    if text_.startswith("#") and text_[1:].isdigit():
        return f"draft-{text_[1:]}"
    return text_


# -- database and catalog ----------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from billing.adapters.db import make_engine, schema_state, upgrade

    with _database(_billing_settings()) as url:
        try:
            upgrade(url)
            engine = make_engine(url)
            state = schema_state(engine)
            engine.dispose()
        except OperationalError as exc:
            raise _unreachable(exc) from exc
    if args.output == "table":
        print(f"database schema is at the newest revision ({state.current})")
    else:
        print_document({"current": state.current, "head": state.head, "is_current": state.is_current}, args.output)
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from billing.adapters.db import make_engine, schema_state

    with _database(_billing_settings()) as url:
        engine = make_engine(url)
        try:
            state = schema_state(engine)
        except OperationalError as exc:
            raise _unreachable(exc) from exc
        finally:
            engine.dispose()
    doc = {"current": state.current, "head": state.head, "is_current": state.is_current}
    if args.output == "table":
        print(f"database {state.current or '(no schema)'}; this streamtoll {state.head}")
        if problem := state.problem():
            print(problem)
    else:
        print_document(doc, args.output)
    return 0 if state.is_current else EXIT_FAILED


def cmd_catalog_load(args: argparse.Namespace) -> int:
    from billing.services.catalog import load_accounts, load_plans

    loader = load_accounts if args.kind == "accounts" else load_plans
    with _engine() as engine:
        try:
            report = loader(engine, args.file)
        except CatalogError as exc:
            raise UserError(f"{args.file} was not loaded; nothing changed:\n  " + "\n  ".join(exc.problems)) from None
        if args.output == "table":
            for label, names in (
                ("created", report.created),
                ("updated", report.updated),
                ("unchanged", report.unchanged),
            ):
                if names:
                    print(f"{args.kind} {label}: {', '.join(names)}")
        else:
            rows = [
                {"name": n, "change": label}
                for label in ("created", "updated", "unchanged")
                for n in getattr(report, label)
            ]
            print_rows(rows, args.output, ["name", "change"])
        sys.stdout.flush()
        _publish_entitlements(engine, strict=False, when_set=True)  # the gateways follow plans and accounts
    return 0


def cmd_accounts_list(args: argparse.Namespace) -> int:
    from billing.services.catalog import list_accounts

    with _engine() as engine:
        rows = list_accounts(engine, args.on)
    print_rows(rows, args.output, ["code", "name", "currency", "tax_rate", "plan", "client_rules", "email"])
    return 0


def cmd_plans_list(args: argparse.Namespace) -> int:
    from billing.services.catalog import list_plans

    with _engine() as engine:
        rows = list_plans(engine)
    print_rows(rows, args.output, ["code", "name", "latest_version", "currency", "versions"])
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from billing.services.keys import create_key, list_keys, revoke_key

    with _engine() as engine:
        try:
            if args.action == "create":
                key = create_key(engine, args.role, args.account)
                if args.output == "table":
                    print(key)
                else:
                    doc = {"key": key, "key_id": key.split("_")[1], "role": args.role, "account": args.account}
                    print_document(doc, args.output)
                print("store it now: it is shown once and kept only as a hash", file=sys.stderr)
            elif args.action == "list":
                rows = list_keys(engine, args.account, include_revoked=args.all)
                print_rows(rows, args.output, ["key_id", "role", "account", "created_at", "revoked_at"])
            else:
                revoke_key(engine, args.key_id)
                if args.output == "table":
                    print(f"revoked key {args.key_id}")
                else:
                    print_document({"key_id": args.key_id, "revoked": True}, args.output)
        except ApiKeyError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


def _overlap(text_: str) -> float:
    try:
        seconds = parse_duration(text_)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 90 * 86400:
        raise argparse.ArgumentTypeError(f"{text_!r} must be a duration from 0s to 90d, e.g. 24h")
    return seconds


def _publish_credentials(engine: Engine, strict: bool) -> int | None:
    """Every credential's state to the credentials topic (the gateways follow it); None when the
    cluster is not set (or, unless ``strict``, does not take them: the next change or start repeats it)."""
    from billing.services.credentials import publish_credentials

    metering = _settings()
    if not metering.kafka_bootstrap:
        if not strict:
            return None
        print(
            "credentials not published: STREAMTOLL_KAFKA_BOOTSTRAP (the gateways' credentials topic) is not set",
            file=sys.stderr,
        )
        return None
    try:
        return publish_credentials(
            engine,
            metering.kafka_config(),
            metering.topic_credentials,
            metering.topic_replication_factor,
            skip_empty=not strict,
        )
    except CredentialError as exc:
        if strict:
            raise Unavailable(str(exc)) from None
        log.error("credentials not published", extra={"error": str(exc)})
        return None


def _publish_entitlements(engine: Engine, strict: bool, when_set: bool = False) -> int | None:
    """Every account's entitlement to the entitlements topic (the gateways follow it); None when
    the cluster is not set or (unless ``strict``) does not take them — the next load, start or
    ``entitlements publish`` repeats it. ``when_set``: after a catalog load, say nothing when no
    cluster is set (billing alone needs none), and a failure is a note, not an error."""
    from billing.services.entitlements import publish_entitlements

    metering = _settings()
    if not metering.kafka_bootstrap:
        if strict:
            print(
                "entitlements not published: STREAMTOLL_KAFKA_BOOTSTRAP (the gateways' entitlements topic) is not set",
                file=sys.stderr,
            )
        return None
    try:
        return publish_entitlements(
            engine,
            metering.kafka_config(),
            metering.topic_entitlements,
            metering.topic_replication_factor,
            skip_empty=not strict,
        )
    except EntitlementError as exc:
        if strict:
            raise Unavailable(str(exc)) from None
        if when_set:
            print(f"entitlements not published: {exc}", file=sys.stderr)
        else:
            log.error("entitlements not published", extra={"error": str(exc)})
        return None


def seconds_to_next_utc_day(now: datetime) -> float:
    """Seconds from ``now`` to just after the next UTC midnight (5 s after: clocks differ a little)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1, seconds=5) - now).total_seconds()


def _entitlements_daily(engine: Engine) -> None:
    """``streamtoll api``'s publication of every account's entitlement: at start, then after each
    UTC midnight, so a subscription that starts or ends on a day reaches the gateways that day."""
    while True:
        _publish_entitlements(engine, strict=False)
        time.sleep(seconds_to_next_utc_day(datetime.now(UTC)))


def cmd_entitlements(args: argparse.Namespace) -> int:
    from billing.services.entitlements import entitlement_view

    with _engine() as engine:
        try:
            if args.action == "show":
                view = entitlement_view(engine, args.account, source_order=_billing_settings().source_order)
                print_document(view, args.output)
            else:
                count = _publish_entitlements(engine, strict=True)
                if count is not None:
                    if args.output == "table":
                        print(f"published {count} entitlement(s)")
                    else:
                        print_document({"published": count}, args.output)
        except EntitlementError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    from billing.services.credentials import create_credential, list_credentials, revoke_credential, rotate_credential

    with _engine() as engine:
        try:
            if args.action in ("create", "rotate"):
                if args.action == "create":
                    issued = create_credential(engine, args.account, args.name)
                else:
                    issued = rotate_credential(engine, args.credential_id, timedelta(seconds=args.overlap))
                doc = {
                    "id": issued.id,
                    "account": issued.account,
                    "username": issued.username,
                    "password": issued.password,
                    "principal": issued.principal,
                    "mechanisms": "SCRAM-SHA-512, SCRAM-SHA-256 (PLAIN over TLS)",
                }
                if args.output == "table":
                    for k, v in doc.items():
                        print(f"{k:<11} {v}")
                else:
                    print_document(doc, args.output)
                print("store the password now: it is shown once and kept only as SCRAM keys", file=sys.stderr)
                sys.stdout.flush()
                _publish_credentials(engine, strict=True)
            elif args.action == "list":
                rows = list_credentials(engine, args.account, include_revoked=args.all)
                print_rows(
                    rows,
                    args.output,
                    [
                        "id",
                        "account",
                        "username",
                        "principal",
                        "state",
                        "created_at",
                        "revoked_at",
                        "old_password_valid_until",
                    ],
                )
            elif args.action == "revoke":
                revoke_credential(engine, args.credential_id)
                if args.output == "table":
                    print(f"revoked credential {args.credential_id}")
                else:
                    print_document({"id": args.credential_id, "revoked": True}, args.output)
                sys.stdout.flush()
                _publish_credentials(engine, strict=True)
            else:
                count = _publish_credentials(engine, strict=True)
                print(f"published {count} credential(s)")
        except CredentialError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from billing.services import webhooks as hooks

    with _engine() as engine:
        try:
            if args.action == "add":
                events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events else None
                added = hooks.add_endpoint(engine, args.account, args.url, events)
                doc = {**hooks.endpoint_doc(added.endpoint), "secret": added.secret}
                if args.output == "table":
                    for k, v in doc.items():
                        print(f"{k:<10} {v}")
                else:
                    print_document(doc, args.output)
                print("store the secret now: it is shown once (it signs every delivery)", file=sys.stderr)
            elif args.action == "list":
                rows = [hooks.endpoint_doc(e) for e in hooks.list_endpoints(engine, args.account, args.all)]
                print_rows(rows, args.output, ["id", "account", "url", "events", "active", "created_at"])
            elif args.action == "remove":
                hooks.remove_endpoint(engine, args.account, args.endpoint_id)
                _report(args.output, f"removed webhook endpoint {args.endpoint_id}", {"id": args.endpoint_id})
            elif args.action == "send":
                while True:
                    r = hooks.send_pending(engine, args.max_attempts, args.timeout)
                    counts = {"delivered": r.delivered, "retrying": r.retrying, "failed": r.failed}
                    sentence = f"delivered {r.delivered}, retrying {r.retrying}, failed {r.failed}"
                    _report(args.output, sentence, counts)
                    sys.stdout.flush()
                    if args.every is None:
                        return EXIT_FAILED if r.failed else 0
                    time.sleep(args.every)
            elif args.action == "replay":
                hooks.replay(engine, args.delivery_id)
                _report(args.output, f"queued delivery {args.delivery_id} again", {"id": args.delivery_id})
            elif args.action == "deliveries":
                rows = [hooks.delivery_doc(d) for d in hooks.list_deliveries(engine, args.account, args.status)]
                print_rows(
                    rows,
                    args.output,
                    ["id", "type", "account", "endpoint", "status", "attempts", "next_attempt_at", "last_status"],
                )
            else:
                print_rows(
                    [hooks.attempt_doc(a) for a in hooks.attempts_of(engine, args.delivery_id)],
                    args.output,
                    ["attempt", "attempted_at", "status_code", "error", "duration_ms"],
                )
        except WebhookError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from billing.services import webhooks as hooks

    columns = ["id", "account", "kind", "amount", "meter", "quantity", "unit", "active"]

    def said(t: Any) -> str:
        if t.kind == "usage":
            return f"{t.meter} {t.quantity.normalize()} {t.unit}"
        return f"{t.amount.normalize()}" if t.kind == "amount" else f"a balance of {t.amount.normalize()} or less"

    with _engine() as engine:
        try:
            if args.action == "add":
                usage = (args.meter, args.quantity, args.unit)
                given = (args.amount is not None) + (args.balance is not None) + any(usage)
                if given > 1:
                    raise UserError("give one of an AMOUNT, --balance, or --meter, --quantity and --unit")
                if given == 0 or (any(usage) and not all(usage)):
                    raise UserError("give an AMOUNT, --balance, or --meter, --quantity and --unit together")
                if args.amount is not None:
                    t = hooks.add_threshold(engine, args.account, args.amount)
                elif args.balance is not None:
                    t = hooks.add_balance_threshold(engine, args.account, args.balance)
                else:
                    t = hooks.add_usage_threshold(engine, args.account, args.meter, args.quantity, args.unit)
                _report(args.output, f"added threshold {t.id}: {t.account} at {said(t)}", hooks.threshold_doc(t))
            elif args.action == "list":
                rows = [hooks.threshold_doc(t) for t in hooks.list_thresholds(engine, args.account, args.all)]
                print_rows(rows, args.output, columns)
            elif args.action == "remove":
                hooks.remove_threshold(engine, args.threshold_id)
                _report(args.output, f"removed threshold {args.threshold_id}", {"id": args.threshold_id})
            else:
                period = args.period or datetime.now(UTC).strftime("%Y-%m")
                crossed = hooks.check_thresholds(engine, period, source_order=_billing_settings().source_order)
                if args.output == "table":
                    print(f"{len(crossed)} threshold(s) reached in {period}")
                    for t in crossed:
                        print(f"  {t.id}  {t.account}  {said(t)}")
                else:
                    print_rows([hooks.threshold_doc(t) for t in crossed], args.output, columns)
        except (WebhookError, RunError) as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


# -- usage, billing, invoices, statements ------------------------------------------------------


def cmd_usage(args: argparse.Namespace) -> int:
    from billing.services.usage import usage_report

    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    if args.start is None or args.end is None:
        raise UserError("the usage report needs --from and --to")
    if args.end <= args.start:
        raise UserError("--to must be after --from")
    with _engine() as engine:
        try:
            rows = usage_report(engine, args.start, args.end, group_by, args.account)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    print_rows(rows, args.output, [*group_by, "bytes", "records", "requests", "denied_requests"])
    return 0


_AMOUNT_COLUMNS = ["account", "period", "currency", "amount_before", "amount_after", "difference"]


def _amendment_table(doc: dict[str, Any]) -> None:
    """An amendment for people: per account and period the amounts and the usage, before → after."""
    for m in doc["amounts"]:
        invoice = f" ({m['invoice']}, {m['status']})" if m.get("invoice") else ""
        effect = f": {m['effect']}" if m.get("effect") else ""
        sign = "" if m["difference"].startswith("-") else "+"
        print(
            f"  {m['account']} {m['period']}{invoice}: {m['amount_before']} → {m['amount_after']} "
            f"{m['currency']} ({sign}{m['difference']}){effect}"
        )
        for u in m["usage"]:
            for q, before in u["before"].items():
                if before != u["after"][q]:
                    print(f"    {u['source']} {u['direction']} {q}: {before} → {u['after'][q]}")


def _actor(given: str | None) -> str:
    """Who makes an amendment: ``--actor``, else the login name."""
    import getpass

    try:
        return given or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        raise UserError("say who corrects the usage: --actor NAME") from None


def cmd_usage_import(args: argparse.Namespace) -> int:
    from billing.adapters.usage_files import read_usage_file
    from billing.errors import AmendmentError
    from billing.services.amendments import import_usage

    billing = _billing_settings()
    actor = _actor(args.actor)
    try:
        records = read_usage_file(args.file)
    except AmendmentError as exc:
        raise UserError(f"{args.file} cannot be imported:\n  " + "\n  ".join(exc.problems)) from None
    with _engine() as engine:
        try:
            result = import_usage(
                engine, records, args.start, args.end, args.reason, actor, args.dry_run, billing.source_order
            )
        except AmendmentError as exc:
            raise UserError(f"{args.file} cannot be imported:\n  " + "\n  ".join(exc.problems)) from None
    return _print_amendment(result, args)


def cmd_usage_remeter(args: argparse.Namespace) -> int:
    from billing.errors import AmendmentError
    from billing.services.amendments import remeter_usage
    from billing.services.usage import read_usage

    billing = _billing_settings()
    actor = _actor(args.actor)
    replay = _connect(args.replayed)  # the replay's scratch database, at this code's schema
    try:
        replayed = read_usage(replay, args.start, args.end, hourly=True)
    except OperationalError as exc:
        raise _unreachable(exc) from exc
    finally:
        replay.dispose()
    with _engine() as engine:
        try:
            result = remeter_usage(
                engine, replayed, args.start, args.end, args.reason, actor, args.dry_run, billing.source_order
            )
        except AmendmentError as exc:
            raise UserError("cannot re-meter:\n  " + "\n  ".join(exc.problems)) from None
    return _print_amendment(result, args)


def _print_amendment(result: Any, args: argparse.Namespace) -> int:
    doc = result.as_dict()
    if args.output == "json":
        print_document(doc, "json")
    elif args.output == "csv":
        print_rows(doc["amounts"], "csv", [*_AMOUNT_COLUMNS, "invoice", "status", "effect"])
    elif not result.changed:
        print("nothing to change: the usage of the range is already what was given (no amendment recorded)")
    else:
        head = "dry run, nothing written" if args.dry_run else f"amendment {result.amendment}"
        print(f"{head}: {doc['rows']} usage difference(s) for {doc['from']} – {doc['to']}")
        _amendment_table(doc)
        if result.rerun:
            print(f"billed again: {', '.join(result.rerun)}")
    return 0


def cmd_amendments(args: argparse.Namespace) -> int:
    from billing.errors import AmendmentError
    from billing.services.amendments import amendment_doc, amendment_view, list_amendments, moved_summary

    with _engine() as engine:
        try:
            if args.action == "list":
                found = list_amendments(engine)
                if args.output == "json":
                    print_rows([amendment_doc(a) for a in found], "json")
                else:
                    rows = [{**amendment_doc(a), "moved": moved_summary(a)} for a in found]
                    print_rows(
                        rows, args.output, ["id", "kind", "created_at", "actor", "reason", "from", "to", "moved"]
                    )
            else:
                doc = amendment_view(engine, args.amendment_id)
                if args.output == "table":
                    print(f"amendment {doc['id']} ({doc['kind']}) by {doc['actor']} at {doc['created_at']}")
                    print(f"  why: {doc['reason']}")
                    print(f"  range: {doc['from']} – {doc['to']}, {doc['rows']} usage difference(s)")
                    _amendment_table(doc)
                elif args.output == "csv":
                    print_rows(doc["amounts"], "csv", _AMOUNT_COLUMNS)
                else:
                    print_document(doc, "json")
        except AmendmentError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


_BILL_COLUMNS = ["account", "status", "number", "currency", "subtotal", "tax", "total"]


def cmd_bill(args: argparse.Namespace) -> int:
    from billing.services.billing_run import run_billing

    billing = _billing_settings()
    if args.shadow or args.plan or args.plan_file or args.accounts:
        return _bill_shadow(args, billing)
    with _engine() as engine:
        try:
            results = run_billing(
                engine,
                args.period,
                args.finalize,
                billing.invoice_number_prefix,
                billing.issuer,
                source_order=billing.source_order,
            )
        except RunError as exc:
            raise UserError(str(exc)) from None
    print_rows([r.as_dict() for r in results], args.output, _BILL_COLUMNS)
    return 0


_THRESHOLD_COLUMNS = ["account", "number", "currency", "subtotal", "tax", "total"]


def cmd_thresholds(args: argparse.Namespace) -> int:
    from billing.services.progressive import check_thresholds

    billing = _billing_settings()
    with _engine() as engine:
        while True:
            try:
                issued = check_thresholds(
                    engine,
                    period=args.period,
                    number_prefix=billing.invoice_number_prefix,
                    issuer=billing.issuer,
                    source_order=billing.source_order,
                )
            except RunError as exc:
                raise UserError(str(exc)) from None
            print_rows([i.as_dict() for i in issued], args.output, _THRESHOLD_COLUMNS)
            sys.stdout.flush()
            if args.every is None:
                return 0
            time.sleep(args.every)


_SHADOW_COLUMNS = [
    "account",
    "currency",
    "real_from",
    "invoice",
    "real_plan",
    "real_total",
    "shadow_plan",
    "shadow_total",
    "difference",
    "note",
]


def _bill_shadow(args: argparse.Namespace, billing: BillingSettings) -> int:
    """``bill --shadow``: the period under a candidate plan beside the real totals; writes nothing."""
    from billing.services.shadow import shadow_run

    if not args.shadow:
        raise UserError("--plan, --plan-file and --accounts are for a shadow run: add --shadow")
    if args.finalize:
        raise UserError("a shadow run writes nothing: --finalize cannot go with --shadow")
    if not args.plan:
        raise UserError("a shadow run needs the candidate: --plan CODE (or CODE@VERSION)")
    accounts = [a.strip() for a in (args.accounts or "").split(",") if a.strip()] or None
    with _engine() as engine:
        try:
            results = shadow_run(
                engine, args.period, args.plan, accounts, args.plan_file, source_order=billing.source_order
            )
        except CatalogError as exc:
            raise UserError(f"{args.plan_file} cannot be read:\n  " + "\n  ".join(exc.problems)) from None
        except RunError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    print_rows([r.as_dict() for r in results], args.output, _SHADOW_COLUMNS)
    skipped = [r.account for r in results if r.shadow is None]
    if skipped:
        sys.stdout.flush()
        print(f"streamtoll: not compared: {', '.join(skipped)} (see NOTE)", file=sys.stderr)
        return EXIT_FAILED
    return 0


_INVOICE_COLUMNS = ["ref", "number", "account", "period_start", "kind", "status", "currency", "total"]


def cmd_invoices(args: argparse.Namespace) -> int:
    from billing.domain.money import format_money
    from billing.services.billing_run import parse_period
    from billing.services.invoices import finalize, invoice_pdf, invoice_view, list_invoices, void

    billing = _billing_settings()
    with _engine() as engine:
        try:
            if args.action == "list":
                start = parse_period(args.period)[0] if args.period else None
                rows = list_invoices(engine, start, args.account, args.status)
                print_rows(rows, args.output, _INVOICE_COLUMNS)
            elif args.action == "show":
                _show_invoice(invoice_view(engine, args.ref), args.output)
            elif args.action == "finalize":
                done = finalize(engine, args.ref, billing.invoice_number_prefix, issuer=billing.issuer)
                total = format_money(done.total, done.currency)
                doc = {"ref": done.ref, "number": done.number, "account": done.account_code, "total": total}
                sentence = f"finalized invoice {done.number} for {done.account_code}: {done.currency} {total}"
                _report(args.output, sentence, doc)
            elif args.action == "pdf":
                out = Path(args.out or f"{args.ref}.pdf")
                pdf = invoice_pdf(engine, args.ref)
                try:
                    out.write_bytes(pdf)
                except OSError as exc:
                    raise UserError(f"cannot write {out} ({exc.strerror})") from None
                _report(args.output, f"wrote {out}", {"ref": args.ref, "path": str(out)})
            elif args.action == "send":
                from billing.services.delivery import send_period

                try:
                    report = send_period(engine, args.period, billing.smtp)
                except (smtplib.SMTPException, OSError) as exc:
                    raise Unavailable(
                        f"the mail server did not take the invoices ({exc}); run send again: none is lost"
                    ) from None
                counts = {"queued": report.queued, "sent": report.sent, "failed": report.failed}
                _report(args.output, f"queued {report.queued}, sent {report.sent}, failed {report.failed}", counts)
                if report.failed:
                    return EXIT_FAILED
            elif args.action == "void":
                number = void(engine, args.ref, args.reason)
                _report(args.output, f"voided invoice {number}", {"ref": number, "status": "void"})
        except (InvoiceError, RunError) as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


def _report(fmt: str, sentence: str, doc: dict[str, Any]) -> None:
    """What an action command prints: a sentence for people, the facts for programs."""
    if fmt == "table":
        print(sentence)
    else:
        print_document(doc, fmt)


_CREDIT_NOTE_COLUMNS = ["number", "invoice", "account", "issued_on", "reason", "settlement", "currency", "total"]


def _operator() -> str:
    """Who a command acts as, in product requests' history: ``cli:<login>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


_PRODUCT_COLUMNS = ["code", "version", "name", "direction", "topics", "plans", "deprecated_until"]
_SUBSCRIPTION_COLUMNS = [
    "id", "account", "product", "version", "status", "requested_by", "requested_at",
    "decided_by", "decided_at", "reason",
]  # fmt: skip


def _product_row(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        **doc,
        "topics": " ".join(t["pattern"] + ("*" if t["match"] == "prefix" else "") for t in doc["topics"]),
        "plans": " ".join(p["plan"] + (" (self-service)" if p["self_service"] else "") for p in doc["plans"]),
    }


def _show_product(doc: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print_document(doc, fmt)
        return
    topics = doc["topics"]
    head = {k: v for k, v in _product_row(doc).items() if k not in ("versions",)}
    print_document(head, fmt)
    for t in topics:
        schema = t.get("schema")
        if schema and fmt == "table":
            print(f"\nschema of {t['pattern']} ({schema['type']}, {schema['file']}):\n{schema.get('text') or ''}")


def cmd_products(args: argparse.Namespace) -> int:
    from billing.services import products

    by = _operator()
    with _engine() as engine:
        try:
            if args.action == "load":
                try:
                    report = products.load_products(engine, args.file)
                except CatalogError as exc:
                    raise UserError(
                        f"{args.file} was not loaded; nothing changed:\n  " + "\n  ".join(exc.problems)
                    ) from None
                rows = [
                    {"name": n, "change": label}
                    for label in ("created", "updated", "unchanged")
                    for n in getattr(report, label)
                ]
                if args.output == "table":
                    for label in ("created", "updated", "unchanged"):
                        if names := getattr(report, label):
                            print(f"products {label}: {', '.join(names)}")
                else:
                    print_rows(rows, args.output, ["name", "change"])
            elif args.action == "list":
                found = products.list_products(engine, args.account)
                print_rows([_product_row(d) for d in found], args.output, _PRODUCT_COLUMNS)
                return 0
            elif args.action == "show":
                _show_product(products.product_view(engine, args.code, args.account, args.version), args.output)
                return 0
            elif args.action == "requests":
                print_rows(products.requests(engine, args.status, args.account), args.output, _SUBSCRIPTION_COLUMNS)
                return 0
            else:
                if args.action == "subscribe":
                    sub = products.subscribe(engine, args.account, args.code, by)
                    sentence = (
                        f"{sub['account']} is subscribed to {sub['product']} v{sub['version']}"
                        if sub["status"] == "active"
                        else f"request {sub['id']}: {sub['account']} asks for {sub['product']} v{sub['version']}; "
                        "finance or ops approve it (streamtoll products approve ID)"
                    )
                elif args.action == "approve":
                    sub = products.approve(engine, args.id, by)
                    sentence = f"approved request {sub['id']}: {sub['account']} is subscribed to {sub['product']}"
                elif args.action == "reject":
                    sub = products.reject(engine, args.id, by, args.reason)
                    sentence = f"rejected request {sub['id']} ({sub['account']}, {sub['product']}): {sub['reason']}"
                else:
                    sub = products.unsubscribe(engine, args.account, args.code, by)
                    sentence = f"cancelled {sub['account']}'s subscription to {sub['product']}"
                _report(args.output, sentence, sub)
        except ProductError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
        sys.stdout.flush()
        _publish_entitlements(engine, strict=False, when_set=True)  # the gateways follow subscriptions
    return 0


def cmd_credit_notes(args: argparse.Namespace) -> int:
    from billing.services.credit_notes import create_credit_note, credit_note_pdf, credit_note_view, list_credit_notes

    with _engine() as engine:
        try:
            if args.action == "create":
                note = create_credit_note(
                    engine,
                    args.ref,
                    amount=args.amount,
                    full=args.full,
                    lines=dict(args.line) if args.line else None,
                    reason=args.reason,
                    reason_text=args.text,
                    settlement=args.settle,
                )
                sentence = (
                    f"issued credit note {note['number']} against {note['invoice']}: "
                    f"{note['currency']} {note['total']} ({note['settlement']})"
                )
                _report(args.output, sentence, note)
            elif args.action == "list":
                print_rows(list_credit_notes(engine, args.account, args.invoice), args.output, _CREDIT_NOTE_COLUMNS)
            elif args.action == "show":
                print_document(credit_note_view(engine, args.number), args.output)
            elif args.action == "pdf":
                out = Path(args.out or f"{args.number}.pdf")
                pdf = credit_note_pdf(engine, args.number)
                try:
                    out.write_bytes(pdf)
                except OSError as exc:
                    raise UserError(f"cannot write {out} ({exc.strerror})") from None
                _report(args.output, f"wrote {out}", {"number": args.number, "path": str(out)})
        except (CreditNoteError, InvoiceError) as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


_GRANT_COLUMNS = [
    "id",
    "account",
    "name",
    "kind",
    "amount",
    "unit",
    "priority",
    "effective_on",
    "expires_on",
    "recurrence",
    "status",
    "burned",
    "pending",
    "left",
    "available",
]


def _who() -> str:
    """Who added or voided a grant from the command line: the operating system user."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _unit_of(g: dict[str, Any]) -> dict[str, Any]:
    return {**g, "unit": g["unit"] or g["currency"]}


def cmd_grants(args: argparse.Namespace) -> int:
    from billing.services.grants import add_grant, list_grants, void_grant

    with _engine() as engine:
        try:
            if args.action == "add":
                added = add_grant(
                    engine,
                    args.account,
                    amount=args.amount,
                    units=args.units,
                    meter=args.meter,
                    unit=args.unit,
                    priority=args.priority,
                    effective_on=args.effective,
                    expires_on=args.expires,
                    recurrence=args.recurring,
                    rollover_limit=args.rollover_limit,
                    name=args.name,
                    reason=args.reason,
                    created_by=_who(),
                )
                what = (
                    f"{added['amount']} {added['currency']}"
                    if added["kind"] == "money"
                    else (f"{added['amount']} {added['unit']} of {added['meter']}")
                )
                _report(args.output, f"added grant {added['id']} to {added['account']}: {what}", added)
            elif args.action == "list":
                print_rows([_unit_of(g) for g in list_grants(engine, args.account)], args.output, _GRANT_COLUMNS)
            elif args.action == "void":
                voided = void_grant(engine, args.id, reason=args.reason, voided_by=_who())
                _report(args.output, f"voided grant {voided['id']} of {voided['account']}", voided)
        except (GrantError, RunError) as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    from billing.services.grants import account_balance

    with _engine() as engine:
        try:
            doc = account_balance(engine, args.account, args.on)
        except RunError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    if args.output == "table":
        print(f"{doc['account']} on {doc['on']}: {doc['money_available']} {doc['currency']} available")
        print_rows([_unit_of(g) for g in doc["grants"]], args.output, _GRANT_COLUMNS)
    else:
        print_document(doc, args.output)
    return 0


def _day(text_: str) -> date:
    try:
        return date.fromisoformat(text_)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a day like 2026-12-01") from None


def _units(text_: str) -> Decimal:
    try:
        amount = Decimal(text_)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a number of units like 500") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a number of units like 500")
    return amount


def _money_amount(text_: str) -> Decimal:
    try:
        amount = Decimal(text_)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"{text_!r} is not an amount like 50.00") from None
    if not amount.is_finite() or amount <= 0:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a positive amount")
    return amount


def _credited_line(text_: str) -> tuple[int, Decimal]:
    """``POSITION=AMOUNT`` (``0=25.00``): a line of the invoice and the net amount credited on it."""
    position, _, amount = text_.partition("=")
    if not position.isdigit() or not amount:
        raise argparse.ArgumentTypeError(f"{text_!r} is not a line like 0=25.00 (position=net amount)")
    return int(position), _money_amount(amount)


def _show_invoice(doc: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print_document(doc, fmt)
        return
    lines = doc.get("lines", [])
    if fmt == "csv":
        print_rows(lines, fmt, ["position", "description", "quantity", "unit", "amount"])
        return
    period = doc.get("period", {})
    head = {
        "ref": doc.get("ref"),
        "number": doc.get("number"),
        "status": doc.get("status"),
        "account": (doc.get("account") or {}).get("code"),
        "period": f"{period.get('start')} – {period.get('end')}",
        "currency": doc.get("currency"),
        "subtotal": doc.get("subtotal"),
        "tax": doc.get("tax"),
        "total": doc.get("total"),
        "credited": doc.get("credited"),
        "balance_due": doc.get("balance_due"),
    }
    print_document({k: v for k, v in head.items() if v is not None}, "table")
    print()
    print_rows(lines, "table", ["position", "description", "quantity", "unit", "amount"])


def cmd_statements(args: argparse.Namespace) -> int:
    from billing.adapters.render import render_statement_pdf
    from billing.services.statements import statement, statement_csv

    billing = _billing_settings()
    fmt = args.output
    with _engine() as engine:
        try:
            doc = statement(engine, args.account, args.period, now=datetime.now(UTC), source_order=billing.source_order)
        except RunError as exc:
            raise (NotFoundError if isinstance(exc, NotFound) else UserError)(str(exc)) from None
    if fmt == "pdf":
        out = Path(args.out or f"statement-{args.account}-{args.period}.pdf")
        out.write_bytes(render_statement_pdf(doc))
        print(f"wrote {out}")
        return 0
    if fmt == "table":
        import io

        buf = io.StringIO()
        head = {k: doc[k] for k in ("account", "period", "from", "to", "currency", "plan")}
        head["rated so far"] = f"{doc['rated_so_far']['total']} (tax {doc['rated_so_far']['tax']})"
        print_document(head, "table", buf)
        buf.write("\n")
        print_rows(
            doc["totals"], "table", ["source", "direction", "bytes", "records", "requests", "denied_requests"], buf
        )
        text_ = buf.getvalue()
    else:
        import json

        text_ = json.dumps(doc, indent=1) + "\n" if fmt == "json" else statement_csv(doc)
    if args.out:
        Path(args.out).write_text(text_)
        print(f"wrote {args.out}")
    else:
        print(text_, end="")
    return 0


# -- processes ---------------------------------------------------------------------------------


def _metrics(
    collector: Any, bind: str | None, health: Any = None, alive: Any = None
) -> contextlib.AbstractContextManager[int | None]:
    from streamtoll.metrics import serve_metrics

    return serve_metrics(collector, bind, health, alive)


def cmd_worker(args: argparse.Namespace) -> int:
    from metering.engine import Engine
    from metering.engine.metrics import EngineCollector

    # The worker allocates millions of short-lived containers per second and holds large state:
    # frequent young-generation collections would cost it a fifth of its time.
    gc.set_threshold(200_000, 50, 100)
    with _kafka(_settings()) as settings:
        engine = Engine(settings)

        def stop(signum: int, frame: FrameType | None) -> None:
            engine.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        bind = args.metrics_bind or settings.metrics_bind
        with _metrics(EngineCollector(engine), bind, engine.health, engine.alive) as port:
            if port is not None:
                print(f"worker metrics on port {port} (/metrics)", file=sys.stderr)
            engine.run()
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from billing.adapters.metrics import SinkCollector
    from billing.adapters.sink import UsageSink

    billing = _billing_settings()
    with _kafka(_settings()) as metering, _database(billing) as url:
        sink = UsageSink(
            _connect(url),
            metering.kafka_config(),
            metering.topic_usage_windows,
            billing.sink_group,
            batch_size=args.batch_size,
            session_timeout_ms=metering.session_timeout_ms,
            episodes_topic=metering.topic_enforcement_events,
        )

        def stop(signum: int, frame: FrameType | None) -> None:
            sink.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def health() -> tuple[bool, dict[str, Any]]:
            return sink.db_up, {"database": "reachable" if sink.db_up else "unreachable", "records": sink.records}

        with _metrics(SinkCollector(sink), args.metrics_bind or metering.metrics_bind, health, sink.alive):
            sink.run()
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """The periodic billing jobs (billing.services.jobs): a round every --every seconds until
    SIGTERM or Ctrl-C (the job in progress finishes), or one round with --once."""
    from billing.services.jobs import JOBS, run_jobs, run_round

    billing = _billing_settings()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def say(line: str) -> None:
        print(line, flush=True)

    with _engine() as engine:
        if args.once:
            outcomes = run_round(engine, JOBS, billing, say)
            return EXIT_FAILED if any(isinstance(o, BaseException) for o in outcomes.values()) else 0
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        say(f"running {', '.join(j.name for j in JOBS)} every {args.every:g} s")
        run_jobs(engine, args.every, stop, JOBS, billing, say)
        say("stopped")
    return 0


def cmd_caps(args: argparse.Namespace) -> int:
    """The monthly caps fold (a Faust worker): usage minutes → month-to-date per account and
    meter → decisions on the enforcement topic the gateways follow (scale by running more)."""
    import faust
    from confluent_kafka import KafkaException

    from metering.streams.caps import CapsApp, ensure_control_topics

    settings = _settings()
    if not settings.kafka_bootstrap:
        raise UserError("set STREAMTOLL_KAFKA_BOOTSTRAP to the broker the metering worker uses")
    try:
        caps = CapsApp(settings, store=args.store, web_port=args.web_port, refresh_s=args.refresh)
    except (ValueError, OSError) as exc:  # a security setting it cannot use, a CA file it cannot read
        raise UserError(f"streamtoll caps: {exc}") from exc
    try:
        ensure_control_topics(settings.kafka_config(), (settings.topic_entitlements, settings.topic_enforcement))
        caps.follower.start()  # every account's caps, read to the end before anything is decided
    except (KafkaException, TimeoutError) as exc:
        raise Unavailable(f"the broker at {settings.kafka_bootstrap} cannot be reached: {exc}") from exc
    worker = faust.Worker(caps.app, loglevel=args.log_level.lower())
    try:
        worker.execute_from_commandline()
    finally:
        caps.stop()
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.errors import GatewaySettingsError, UpstreamError
    from gateway.journal import JournalBusy
    from gateway.metrics import GatewayCollector
    from gateway.run import run_gateway
    from gateway.settings import GatewaySettings

    try:
        gw = GatewaySettings.from_env()
    except GatewaySettingsError as exc:
        raise UserError("invalid settings:\n  " + "\n  ".join(exc.problems)) from exc
    with _kafka(_settings()) as metering:
        bind = args.metrics_bind or metering.metrics_bind

        def observe(gateway: Any, audit: Any) -> contextlib.AbstractContextManager[object]:
            return _metrics(GatewayCollector(gateway, audit), bind, gateway.health, gateway.alive)

        try:
            run_gateway(gw, metering, observe)
        except UpstreamError as exc:
            raise Unavailable(
                f"{exc}; check STREAMTOLL_GATEWAY_UPSTREAM_BOOTSTRAP (or STREAMTOLL_KAFKA_BOOTSTRAP)"
            ) from exc
        except JournalBusy as exc:
            raise UserError(f"{exc}; give each gateway its own STREAMTOLL_GATEWAY_JOURNAL_DIR") from exc
        except OSError as exc:
            raise UserError(
                f"the gateway cannot listen ({exc}); "
                "check STREAMTOLL_GATEWAY_LISTEN and STREAMTOLL_GATEWAY_BROKER_PORTS"
            ) from exc
    return 0


def _api_bind(given: str | None) -> str:
    bind = given or os.environ.get("STREAMTOLL_API_BIND") or "127.0.0.1:8080"
    try:
        return _bind(bind)
    except argparse.ArgumentTypeError:
        raise UserError(f"STREAMTOLL_API_BIND={bind!r} must look like 127.0.0.1:8080") from None


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from billing.api.app import create_app
    from streamtoll.serving import SERVER_OPTIONS

    billing = _billing_settings()
    metering = _settings()
    host, _, port = _api_bind(args.bind).rpartition(":")
    with _database(billing) as url:
        engine = _connect(url)
        _publish_credentials(engine, strict=False)  # repairs a publication a crash cut short
        # only when there are accounts; in the background, so an absent cluster delays nothing;
        # again after every UTC midnight, when subscriptions start and end
        threading.Thread(target=_entitlements_daily, args=(engine,), name="entitlements-publish", daemon=True).start()
        feed = _live_feed(metering, engine, billing)
        app = create_app(
            engine,
            billing,
            live=feed,
            publish_credentials=lambda: _publish_credentials(engine, strict=False) is not None,
            publish_entitlements=lambda: _publish_entitlements(engine, strict=False) is not None,
        )
        print(f"streamtoll API on http://{host}:{port} (OpenAPI at /openapi.json)", file=sys.stderr)
        print(f"live page on http://{host}:{port}/live", file=sys.stderr)
        try:
            # SERVER_OPTIONS: X-Forwarded-For is not rewritten (the tests' servers run with them too)
            uvicorn.run(
                app, host=host, port=int(port), log_level=args.log_level.lower(), access_log=False, **SERVER_OPTIONS
            )
        finally:
            if feed is not None:
                feed.stop()
    return 0


def _live_feed(metering: MeteringSettings, engine: Engine, billing: BillingSettings) -> Any:
    """The live view's feed when a broker is configured (the API alone starts no broker)."""
    from functools import partial

    from billing.adapters.live_feed import LiveFeed, LiveSources
    from billing.services.live import read_base
    from billing.services.live_view import LiveBoard

    if not metering.kafka_bootstrap:
        log.warning("STREAMTOLL_KAFKA_BOOTSTRAP is unset: /v1/live and /live are off")
        return None
    sources = LiveSources(
        kafka_config=metering.kafka_config(),
        topic_minutes=metering.topic_usage_minutes,
        topic_dlq=metering.topic_dlq,
        input_topics=tuple(metering.input_topics),
        topic_enforcement=metering.topic_enforcement,
        topic_enforcement_events=metering.topic_enforcement_events,
        metering_group=metering.group_id,
    )
    board = LiveBoard(source_order=billing.source_order)
    return LiveFeed(sources, board, partial(read_base, engine, source_order=billing.source_order)).start()


def cmd_top(args: argparse.Namespace) -> int:
    from streamtoll.top import ApiUnreachable, KeyRefused, run_top

    key = args.key or os.environ.get("STREAMTOLL_API_KEY")
    if not key:
        raise UserError("give an ops or finance API key with --key or STREAMTOLL_API_KEY")
    url = args.url or "http://" + _api_bind(None)
    try:
        return run_top(url, key, every=args.every, once=args.once, fmt=args.output)
    except KeyRefused as exc:
        raise AuthError(str(exc)) from None
    except ApiUnreachable as exc:
        raise Unavailable(str(exc)) from None


def cmd_up(args: argparse.Namespace) -> int:
    """Everything running locally: worker, caps, sink, jobs, gateway and API as supervised children
    (streamtoll.dev.up)."""
    from billing.adapters.db import upgrade
    from billing.services.catalog import load_accounts, load_plans
    from billing.services.keys import create_key
    from billing.services.products import load_products
    from metering.engine.topics import ensure_topics
    from streamtoll.dev import up
    from streamtoll.dev.gateway_clients import wait_listening

    billing = _billing_settings()
    metering = _settings()
    api_bind = _api_bind(args.bind)
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
            raise _unreachable(exc) from exc
        engine = _connect(url)
        key = partner_key = None
        if embedded_db:
            with engine.connect() as conn:
                empty = conn.execute(text("SELECT count(*) FROM accounts")).scalar_one() == 0
            if empty:
                load_plans(engine, up.SAMPLES / "plans.yaml")
                load_accounts(engine, up.SAMPLES / "accounts.yaml")
                load_products(engine, up.SAMPLES / "products.yaml")
                print("loaded the sample plans, accounts and products into the embedded database", file=sys.stderr)
            key = create_key(engine, "ops", None)  # a local dev database: a key for the live page
            partner_key = create_key(engine, "partner", "acme")  # and one to sign in to the portal
        engine.dispose()
        ensure_topics(settings)
        kids, urls = up.children(settings, url, api_bind, Path(".streamtoll") / "logs", embedded_kafka)
        supervisor = up.Supervisor(kids)
        supervisor.start()
        watcher = threading.Thread(target=supervisor.watch, args=(sys.stderr,), name="supervisor", daemon=True)
        watcher.start()
        try:
            if not up.wait_healthy(urls["api"]):
                raise UserError(f"the API did not become healthy; see {kids[-1].log_path}")
            traffic = args.traffic if args.traffic is not None else embedded_kafka
            gateway = next(k for k in kids if k.name == "gateway")
            if not wait_listening(urls["gateway"], gateway.alive):
                print(f"the gateway did not come up; see {gateway.log_path}", file=sys.stderr, flush=True)
            with up.traffic(settings, urls["gateway"] if gateway.alive() else None, traffic):
                live = urls["api"] + "/live" + (f"#key={key}" if key else "")
                print("streamtoll is up:", flush=True)
                print(f"  live page    {live}", flush=True)
                if not key:
                    print("               (create a key: streamtoll keys create --role ops)", flush=True)
                print(f"  API          {urls['api']}  (OpenAPI: {urls['api']}/openapi.json)", flush=True)
                print(f"  portal       {urls['portal']}  (partners sign in with a partner key)", flush=True)
                if partner_key:
                    print(f"               demo partner key (acme): {partner_key}", flush=True)
                print(
                    f"  metrics      {urls['api']}/metrics  {urls['worker_metrics']}  {urls['sink_metrics']}  "
                    f"{urls['gateway_metrics']}"
                )
                kafka_kind = "embedded, memory storage" if embedded_kafka else "STREAMTOLL_KAFKA_BOOTSTRAP"
                print(f"  Kafka        {settings.kafka_bootstrap}  ({kafka_kind})", flush=True)
                print(
                    f"  gateway      {urls['gateway']}  (Kafka clients connect here; every Produce and Fetch metered)"
                )
                print(
                    "  caps         streamtoll caps: usage minutes → month-to-date per account → the decisions the "
                    "gateway enforces (throttles and blocks on the live page and in streamtoll top)"
                )
                print(
                    f"  jobs         streamtoll jobs every {up.JOBS_EVERY_S} s: thresholds check, alerts check, "
                    "webhooks send (streamtoll webhooks deliveries shows what was sent)"
                )
                print(f"  PostgreSQL   {'embedded, .streamtoll/pg' if embedded_db else 'STREAMTOLL_DATABASE_URL'}")
                print(f"  logs         {Path('.streamtoll') / 'logs'}/", flush=True)
                if traffic:
                    print(
                        "  traffic      confluent-kafka producers and consumers through the gateway, a few hundred "
                        "records/s (client ids acme-*, initech-*, hooli-test)",
                        flush=True,
                    )
                print("Ctrl-C stops everything.", flush=True)
                stop.wait()
                print("stopping …", file=sys.stderr, flush=True)
        finally:
            supervisor.stop()
            watcher.join(5)
    print("stopped", file=sys.stderr, flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamtoll.dev.demo import run_demo

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
    issuer = _billing_settings(env).issuer
    metering = _settings(env)
    with _kafka(metering) as settings, _database(_billing_settings()) as server_url:
        url = _fresh_database(server_url, "streamtoll_demo_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S"))
        print(f"demo database {url.rsplit('/', 1)[-1].split('?')[0]}", flush=True)
        exact = run_demo(settings, url, Path(args.out), args.proxy_events, args.period, args.seed, issuer)
    return 0 if exact else EXIT_FAILED


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
        raise Unavailable(f"could not create the database {name} ({str(exc).splitlines()[0]})") from exc
    finally:
        admin.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def cmd_settings(args: argparse.Namespace) -> int:
    from streamtoll.settings_catalog import SETTINGS

    rows = []
    for s in SETTINGS:
        if s.dev and not args.all:
            continue
        var = f"STREAMTOLL_{s.name}"
        value = os.environ.get(var)
        shown = None if value is None else "(set, secret)" if s.secret else value
        rows.append(
            {"name": var, "value": shown, "default": s.default or None, "read_by": s.used_by, "meaning": s.meaning}
        )
    print_rows(rows, args.output, ["name", "value", "default", "read_by"] if args.output == "table" else None)
    return 0


# -- developer commands ------------------------------------------------------------------------


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
    from streamtoll.dev.bench import bench_ingest

    with _kafka(_settings()) as settings:
        assert settings.kafka_bootstrap
        result = bench_ingest(settings.kafka_bootstrap, args.events, args.workers, args.reference)
    print(result.table())
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from streamtoll.dev.bench import HistoryResult, MemoryResult, bench_history, bench_memory

    settings = _settings()
    if args.hours is None and args.snapshot_interval is not None:
        raise UserError("--snapshot-interval applies to a history: give --hours too")
    if args.hours is not None and args.hours * 3600 > settings.max_lateness_s:
        raise UserError(
            f"--hours {args.hours} is older than STREAMTOLL_MAX_LATENESS allows "
            f"(at most {int(settings.max_lateness_s // 3600)} hours): the worker would refuse the oldest records"
        )
    with _kafka(settings) as s:
        assert s.kafka_bootstrap
        result: HistoryResult | MemoryResult
        if args.hours is None:
            result = bench_memory(s.kafka_bootstrap, args.series or 100_000)
        else:
            result = bench_history(s.kafka_bootstrap, args.series or 1_000, args.hours, args.snapshot_interval or 30)
    if args.output == "json":
        print_document(result, "json")
    else:
        print(result.table())
    return 0


def cmd_bench_gateway(args: argparse.Namespace) -> int:
    from streamtoll.dev.bench_gateway import bench_gateway

    with _kafka(_settings()) as settings:
        assert settings.kafka_bootstrap
        result = bench_gateway(settings.kafka_bootstrap, args.messages, args.size)
    print(result.table())
    return 0


def cmd_bench_billing(args: argparse.Namespace) -> int:
    from streamtoll.dev.bench_billing import bench_billing

    with _database(_billing_settings()) as server_url:
        url = _fresh_database(server_url, "streamtoll_bench_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S"))
        print(bench_billing(url, args.accounts, args.clients).table())
    return 0


def cmd_bench_api(args: argparse.Namespace) -> int:
    from streamtoll.dev.bench_billing import bench_api

    with _database(_billing_settings()) as server_url:
        url = _fresh_database(server_url, "streamtoll_bench_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S"))
        print(bench_api(url, args.clients, args.requests).table())
    return 0


# -- the parser --------------------------------------------------------------------------------

OPERATOR_COMMANDS = (
    ("demo", "the main job end to end on embedded defaults: meter and bill a month of traffic"),
    ("up", "everything running locally: worker, sink, API and live page"),
    ("worker", "the metering worker; scale by running more (up to the input partitions)"),
    ("sink", "usage windows topic → PostgreSQL"),
    ("api", "HTTP server: partner, finance and ops API and the live page"),
    ("gateway", "Kafka-protocol gateway: clients connect through it, every Produce and Fetch is metered"),
    ("db", "database schema: upgrade, current"),
    ("accounts", "accounts: load a YAML file, list"),
    ("plans", "plans: load a YAML file, list"),
    ("keys", "API keys: create, list, revoke"),
    ("credentials", "Kafka credentials for the gateway: create, list, rotate, revoke, publish"),
    ("webhooks", "signed webhooks: endpoints (add, list, remove), send, replay, deliveries, attempts"),
    ("alerts", "amount, usage and balance thresholds per account: add, list, remove, check (a webhook event)"),
    ("entitlements", "what each account may do at the gateway (access, limits, caps): show, publish"),
    ("usage", "usage as the database holds it (finance view); import: correct a range"),
    ("bill", "billing run for a period: drafts (and --finalize)"),
    ("thresholds", "threshold invoices (progressive billing): check, issuing those due mid-period"),
    ("invoices", "invoice lifecycle: list, show, pdf, finalize, void, send"),
    ("credit-notes", "credit notes against finalized invoices: create, list, show, pdf"),
    ("grants", "prepaid credits and grants (money or a meter's units): add, list, void"),
    ("balance", "an account's prepaid balance: each grant, what is burned, pending and left"),
    ("products", "streaming API products: load, list, show; subscribe, requests, approve, reject, unsubscribe"),
    ("amendments", "usage corrections (streamtoll usage import): list, show — who, when, why, amounts moved"),
    ("statements", "a partner's usage statement for a period"),
    ("top", "live consumption tables in the terminal (reads the API's /v1/live)"),
    ("settings", "every STREAMTOLL_* setting, its value here and its default"),
    ("caps", "monthly caps: usage minutes → month-to-date per account → decisions the gateways enforce"),
    ("jobs", "the periodic billing jobs (thresholds check, alerts check, webhooks send) every --every seconds"),
)
DEVELOPER_COMMANDS = (
    ("broker", "run the embedded dev broker in the foreground"),
    ("bench", "benchmarks: ingest, memory, gateway, billing, api"),
)


def _help_text() -> str:
    def table(rows: Sequence[tuple[str, str]]) -> str:
        return "\n".join(f"  {name:<12} {what}" for name, what in rows)

    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        f"operator commands:\n{table(OPERATOR_COMMANDS)}\n\n"
        f"developer commands:\n{table(DEVELOPER_COMMANDS)}\n\n"
        f"exit codes:\n{codes}\n\n"
        "`streamtoll COMMAND -h` tells more; settings come from STREAMTOLL_* variables (`streamtoll settings`)."
    )


def _common() -> argparse.ArgumentParser:
    """Options every command takes, so they may also follow the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=_log_level,
        default=argparse.SUPPRESS,
        help=f"{', '.join(LOG_LEVELS)} (default STREAMTOLL_LOG_LEVEL or INFO); logs are JSON lines on stderr",
    )
    return common


def _output(p: argparse.ArgumentParser, formats: Sequence[str] = FORMATS, default: str = "table") -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=formats,
        default=default,
        help=f"output format: {', '.join(formats)} (default {default})",
    )
    p.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")
    if "csv" in formats:
        p.add_argument("--csv", dest="output", action="store_const", const="csv", help="same as -o csv")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(
        prog="streamtoll",
        description="Usage metering and billing for Apache Kafka.",
        epilog=_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"streamtoll {_version()}", help="print the version")
    p.add_argument(
        "--log-level",
        type=_log_level,
        default=None,
        help=f"{', '.join(LOG_LEVELS)} (default STREAMTOLL_LOG_LEVEL or INFO); also after the command",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands below")
    helps = dict(OPERATOR_COMMANDS + DEVELOPER_COMMANDS)

    def command(
        parent: Any, name: str, func: Callable[[argparse.Namespace], int] | None, help_: str | None = None
    ) -> argparse.ArgumentParser:
        text_ = help_ or helps[name]
        cp: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=text_, description=text_)
        if func is not None:
            cp.set_defaults(func=func)
        return cp

    def group(name: str) -> Any:
        return command(sub, name, None).add_subparsers(dest="action", required=True, metavar="ACTION")

    d = command(sub, "demo", cmd_demo)
    d.add_argument("--out", default="out", help="folder for invoices, statements and CSV summaries (default out)")
    d.add_argument("--proxy-events", type=_positive, default=200_000, help="proxy audit records to generate")
    d.add_argument("--period", type=_period, default=None, help="YYYY-MM to bill (default: the last complete month)")
    d.add_argument("--seed", type=int, default=7, help="traffic generator seed (same seed, same traffic)")

    upp = command(sub, "up", cmd_up)
    upp.add_argument("--bind", type=_bind, default=None, help="API HOST:PORT (default STREAMTOLL_API_BIND)")
    tg = upp.add_mutually_exclusive_group()
    tg.add_argument(
        "--traffic", dest="traffic", action="store_true", default=None, help="generate demo traffic (embedded default)"
    )
    tg.add_argument("--no-traffic", dest="traffic", action="store_false", help="no demo traffic")

    w = command(sub, "worker", cmd_worker)
    w.add_argument("--metrics-bind", type=_bind, default=None, help="HOST:PORT for /metrics (default METRICS_BIND)")
    sk = command(sub, "sink", cmd_sink)
    sk.add_argument("--batch-size", type=_positive, default=50_000, help="window records per database transaction")
    sk.add_argument("--metrics-bind", type=_bind, default=None, help="HOST:PORT for /metrics (default METRICS_BIND)")
    gwc = command(sub, "gateway", cmd_gateway)
    gwc.add_argument("--metrics-bind", type=_bind, default=None, help="HOST:PORT for /metrics (default METRICS_BIND)")
    cp = command(sub, "caps", cmd_caps)
    cp.add_argument("--store", default="memory://", help="Faust table store, e.g. rocksdb:// (default memory://)")
    cp.add_argument("--web-port", type=int, default=None, help="Faust's web port (default: none)")
    cp.add_argument(
        "--refresh", type=float, default=60.0, help="seconds between decisions that only refresh month-to-date usage"
    )
    jb = command(sub, "jobs", cmd_jobs)
    jb.add_argument("--every", type=_every, default=30.0, help="seconds (or 5m …) from one round to the next (30)")
    jb.add_argument("--once", action="store_true", help="run one round and exit (1 if a job failed)")
    ap = command(sub, "api", cmd_api)
    ap.add_argument("--bind", type=_bind, default=None, help="HOST:PORT (default STREAMTOLL_API_BIND, 127.0.0.1:8080)")

    db = group("db")
    _output(command(db, "upgrade", cmd_db_upgrade, "apply the migrations up to this streamtoll's schema"))
    _output(
        command(db, "current", cmd_db_current, "the database's schema revision and this code's (exit 1 if they differ)")
    )

    for kind in ("accounts", "plans"):
        g = group(kind)
        ld = command(g, "load", cmd_catalog_load, f"load {kind} from a YAML file (idempotent: twice changes nothing)")
        ld.add_argument("file", type=Path, help="the YAML file")
        ld.set_defaults(kind=kind)
        _output(ld)
        ls = command(g, "list", cmd_accounts_list if kind == "accounts" else cmd_plans_list, f"the {kind} loaded")
        if kind == "accounts":
            ls.add_argument(
                "--on", type=date.fromisoformat, default=date.today(), help="show the plan in force on this day"
            )
        _output(ls)

    keys = group("keys")
    kc = command(keys, "create", cmd_keys, "print a new API key once (stored hashed)")
    kc.add_argument("--account", default=None, help="the partner's account code (partner keys)")
    kc.add_argument("--role", choices=("partner", "finance", "ops"), default="partner", help="what the key may read")
    kl = command(keys, "list", cmd_keys, "the keys (ids, roles, accounts; never secrets)")
    kl.add_argument("--account", default=None, help="only this account's keys")
    kl.add_argument("--all", action="store_true", help="include revoked keys")
    kr = command(keys, "revoke", cmd_keys, "revoke a key at once")
    kr.add_argument("key_id", help="the id part of stk_<id>_<secret>")
    for kp in (kc, kl, kr):
        _output(kp)

    creds = group("credentials")
    cc = command(
        creds, "create", cmd_credentials, "issue a Kafka credential of an account; the password is printed once"
    )
    cc.add_argument("--account", required=True, help="the account code its traffic is billed to")
    cc.add_argument("--name", default=None, help="the name after <account>/ in the user name (default: random)")
    cl = command(creds, "list", cmd_credentials, "the credentials (never passwords or keys)")
    cl.add_argument("--account", default=None, help="only this account's credentials")
    cl.add_argument("--all", action="store_true", help="include revoked credentials")
    cr = command(creds, "revoke", cmd_credentials, "revoke a credential at once; gateways close its connections")
    cr.add_argument("credential_id", help="the credential's id (cred_…)")
    co = command(creds, "rotate", cmd_credentials, "a new password; the old one stays valid for --overlap")
    co.add_argument("credential_id", help="the credential's id (cred_…)")
    co.add_argument("--overlap", type=_overlap, default=86400.0, help="how long the old password stays valid (24h)")
    cp = command(creds, "publish", cmd_credentials, "publish every credential's state to the gateways' topic again")
    for p_ in (cc, cl, cr, co, cp):
        _output(p_)

    hk = group("webhooks")
    ha = command(hk, "add", cmd_webhooks, "add an account's endpoint; its signing secret is printed once")
    ha.add_argument("account", help="the account code")
    ha.add_argument("url", help="http(s) URL the events are POSTed to")
    ha.add_argument("--events", default=None, help="comma list of event types (default: every type)")
    hl = command(hk, "list", cmd_webhooks, "the endpoints (never secrets)")
    hl.add_argument("account", nargs="?", default=None, help="only this account's endpoints")
    hl.add_argument("--all", action="store_true", help="include removed endpoints")
    hr = command(hk, "remove", cmd_webhooks, "remove an endpoint; its queued deliveries are cancelled")
    hr.add_argument("account", help="the account code")
    hr.add_argument("endpoint_id", help="the endpoint's id (whe_…)")
    hs = command(hk, "send", cmd_webhooks, "deliver the due events once (exit 1 if some failed for good)")
    hs.add_argument("--max-attempts", type=_positive, default=8, help="attempts before a delivery fails (8)")
    hs.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a receiver's answer (10)")
    hs.add_argument("--every", type=float, default=None, help="keep sending, every this many seconds")
    hp = command(hk, "replay", cmd_webhooks, "queue a delivery again by id (its attempts are kept in the log)")
    hp.add_argument("delivery_id", type=_positive, help="the delivery's id")
    hd = command(hk, "deliveries", cmd_webhooks, "the deliveries, newest first")
    hd.add_argument("--account", default=None, help="only this account's")
    hd.add_argument(
        "--status",
        choices=("pending", "sending", "delivered", "failed", "cancelled"),
        help="only deliveries in this status",
    )
    ht = command(hk, "attempts", cmd_webhooks, "the log of one delivery: one row per attempt")
    ht.add_argument("delivery_id", type=_positive, help="the delivery's id")
    for hp_ in (ha, hl, hr, hs, hp, hd, ht):
        _output(hp_)

    al = group("alerts")
    ala = command(
        al,
        "add",
        cmd_alerts,
        "alert when the account's rated amount of a period reaches AMOUNT, a meter's usage a quantity, "
        "or the money its prepaid grants have left falls to --balance",
    )
    ala.add_argument("account", help="the account code")
    ala.add_argument("amount", nargs="?", default=None, help="in the account's currency, before tax (150.00)")
    ala.add_argument("--meter", default=None, help="a usage threshold's meter (consume_bytes, produce_records …)")
    ala.add_argument("--quantity", default=None, help="a usage threshold's quantity, in --unit (500)")
    ala.add_argument("--unit", default=None, help="GB, GiB, TB, TiB for bytes; 1, thousand, million for counts")
    ala.add_argument(
        "--balance", default=None, help="a balance threshold: money left of prepaid grants, at or below (20.00)"
    )
    all_ = command(al, "list", cmd_alerts, "the thresholds")
    all_.add_argument("account", nargs="?", default=None, help="only this account's thresholds")
    all_.add_argument("--all", action="store_true", help="include removed thresholds")
    alr = command(al, "remove", cmd_alerts, "remove a threshold")
    alr.add_argument("threshold_id", help="the threshold's id (thr_…)")
    alc = command(al, "check", cmd_alerts, "measure the period so far; each threshold newly reached emits one event")
    alc.add_argument("--period", type=_period, default=None, help="YYYY-MM (default: this UTC month)")
    for ap_ in (ala, all_, alr, alc):
        _output(ap_)

    ents = group("entitlements")
    es = command(ents, "show", cmd_entitlements, "an account's access, limits, caps and month-to-date usage (JSON)")
    es.add_argument("--account", required=True, help="the account code")
    _output(es, ("json", "table"), default="json")
    ep = command(ents, "publish", cmd_entitlements, "publish every account's entitlement to the gateways' topic again")
    _output(ep)

    us = command(sub, "usage", cmd_usage)
    us.add_argument("--from", dest="start", type=_day_or_time, help="start (inclusive), UTC (required)")
    us.add_argument("--to", dest="end", type=_day_or_time, help="end (exclusive), UTC (required)")
    us.add_argument("--account", default=None, help="only this account's usage")
    groups = ("source", "account", "principal", "client_id", "virtual_cluster", "topic", "direction", "hour", "day")
    us.add_argument("--group-by", default="source,account,direction", help="comma list of: " + ", ".join(groups))
    _output(us)
    usub = us.add_subparsers(
        dest="usage_action",
        metavar="ACTION",
        help="import: correct a range; remeter: take a replay's usage (without ACTION: the usage report)",
    )
    ui = command(
        usub,
        "import",
        cmd_usage_import,
        "replace the usage of a range by corrected rows (an amendment: audited, never over the metered rows)",
    )
    ui.add_argument(
        "file",
        type=Path,
        help="CSV or JSON as `streamtoll usage` writes it, grouped by "
        "source,principal,client_id,virtual_cluster,topic,direction and hour (or day)",
    )
    ui.add_argument(
        "--from", dest="start", type=_day_or_time, required=True, help="start of the range (inclusive), UTC"
    )
    ui.add_argument("--to", dest="end", type=_day_or_time, required=True, help="end of the range (exclusive), UTC")
    ui.add_argument("--reason", required=True, help="why the usage is corrected (kept with the amendment)")
    ui.add_argument("--actor", default=None, help="who corrects it (default: the login name)")
    ui.add_argument("--dry-run", action="store_true", help="check the file and show what would change; write nothing")
    _output(ui)

    ur = command(
        usub,
        "remeter",
        cmd_usage_remeter,
        "make a range's usage what a replay metered (runbook: Backfill and replay), as an amendment",
    )
    ur.add_argument(
        "--replayed",
        required=True,
        metavar="DATABASE_URL",
        help="the scratch database the replay's sink wrote (every key of the range is taken from it)",
    )
    ur.add_argument(
        "--from", dest="start", type=_day_or_time, required=True, help="start of the range (inclusive), UTC"
    )
    ur.add_argument("--to", dest="end", type=_day_or_time, required=True, help="end of the range (exclusive), UTC")
    ur.add_argument("--reason", required=True, help="why the range is re-metered (kept with the amendment)")
    ur.add_argument("--actor", default=None, help="who re-meters it (default: the login name)")
    ur.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    _output(ur)

    am = group("amendments")
    aml = command(am, "list", cmd_amendments, "every amendment: who, when, why, the range, the amounts moved")
    ams = command(am, "show", cmd_amendments, "one amendment, per account and period the amounts and usage moved")
    ams.add_argument("amendment_id", type=_positive, help="the amendment's id")
    for ap2 in (aml, ams):
        _output(ap2)

    bl = command(sub, "bill", cmd_bill)
    bl.add_argument("--period", type=_period, required=True, help="YYYY-MM")
    bl.add_argument("--finalize", action="store_true", help="also finalize: number, freeze and render the invoices")
    bl.add_argument(
        "--shadow",
        action="store_true",
        help="rate the period under a candidate plan beside the real invoices; writes nothing",
    )
    bl.add_argument(
        "--plan",
        metavar="CODE[@VERSION]",
        help="--shadow: the candidate, a plan of the catalog (newest version, or @VERSION) or of --plan-file",
    )
    bl.add_argument(
        "--plan-file", type=Path, metavar="FILE", help="--shadow: take --plan from this plans YAML file (not loaded)"
    )
    bl.add_argument("--accounts", metavar="A,B", help="--shadow: only these accounts (default: every account billed)")
    _output(bl)

    th = group("thresholds")
    thc = command(
        th, "check", cmd_thresholds, "issue the threshold invoices due now (the plan's threshold_invoice; idempotent)"
    )
    thc.add_argument("--period", type=_period, default=None, help="YYYY-MM (default: the current month, UTC)")
    thc.add_argument("--every", type=float, default=None, help="keep checking, every this many seconds")
    _output(thc)

    inv = group("invoices")
    il = command(inv, "list", cmd_invoices, "invoices, oldest period first")
    il.add_argument("--period", type=_period, help="YYYY-MM")
    il.add_argument("--account", help="one account's invoices")
    il.add_argument("--status", choices=("draft", "finalized", "void"), help="only invoices in this status")
    ref_help = "invoice number (INV-2026-000042), or draft-<id> for a draft (draft-42)"
    ish = command(inv, "show", cmd_invoices, "one invoice: header and lines")
    ish.add_argument("ref", type=_invoice_ref, help=ref_help)
    ifn = command(inv, "finalize", cmd_invoices, "number, freeze and render one draft")
    ifn.add_argument("ref", type=_invoice_ref, help="the draft: draft-<id> (draft-42)")
    ipdf = command(inv, "pdf", cmd_invoices, "write the stored PDF of a finalized invoice")
    ipdf.add_argument("ref", type=_invoice_ref, help=ref_help)
    ipdf.add_argument("--out", default=None, help="file to write (default REF.pdf)")
    isend = command(
        inv, "send", cmd_invoices, "email the period's finalized invoices (outbox: never twice, never skipped)"
    )
    isend.add_argument("--period", type=_period, required=True, help="YYYY-MM")
    iv = command(inv, "void", cmd_invoices, "void a finalized invoice (it stays, marked void)")
    iv.add_argument("ref", type=_invoice_ref, help="invoice number")
    iv.add_argument("--reason", required=True, help="why (kept with the invoice)")
    for ip in (il, ish, ifn, ipdf, isend, iv):
        _output(ip)

    cn = group("credit-notes")
    cnc = command(cn, "create", cmd_credit_notes, "credit a finalized invoice in full or in part (it never changes)")
    cnc.add_argument("ref", type=_invoice_ref, help="the finalized invoice's number (INV-2026-000042)")
    how = cnc.add_mutually_exclusive_group(required=True)
    how.add_argument("--amount", type=_money_amount, help="the amount credited, tax included (50.00)")
    how.add_argument("--full", action="store_true", help="everything not yet credited on the invoice")
    how.add_argument(
        "--line", type=_credited_line, action="append", help="POSITION=NET: a line and the net credited on it (repeat)"
    )
    cnc.add_argument(
        "--reason", required=True, choices=("duplicate", "error", "goodwill", "order_change", "other"), help="why"
    )
    cnc.add_argument("--text", default=None, help="why, in words (required with --reason other)")
    cnc.add_argument(
        "--settle", choices=("credit", "refunded"), default="credit", help="credit: to the next invoices (default)"
    )
    cnl = command(cn, "list", cmd_credit_notes, "credit notes in issue order")
    cnl.add_argument("--account", default=None, help="one account's credit notes")
    cnl.add_argument("--invoice", type=_invoice_ref, default=None, help="the credit notes of one invoice")
    cns = command(cn, "show", cmd_credit_notes, "one credit note")
    cns.add_argument("number", help="its number (CN-2026-0001)")
    cnp = command(cn, "pdf", cmd_credit_notes, "write a credit note's PDF")
    cnp.add_argument("number", help="its number (CN-2026-0001)")
    cnp.add_argument("--out", default=None, help="file to write (default NUMBER.pdf)")
    for cp_ in (cnc, cnl, cns, cnp):
        _output(cp_)

    gr = group("grants")
    gra = command(gr, "add", cmd_grants, "give an account money or a meter's units, burned before it pays")
    gra.add_argument("account", help="account code")
    what = gra.add_mutually_exclusive_group(required=True)
    what.add_argument("--amount", type=_money_amount, help="money, in the account's currency (100.00)")
    what.add_argument("--units", type=_units, help="units of --meter in --unit (500)")
    gra.add_argument("--meter", default=None, help="with --units: the meter (consume_bytes)")
    gra.add_argument("--unit", default=None, help="with --units: the unit as plans write it (GB, GiB, million …)")
    gra.add_argument("--priority", type=int, default=10, help="lower burns first (default 10)")
    gra.add_argument("--effective", type=_day, default=None, help="first day in force (default today, UTC)")
    gra.add_argument("--expires", type=_day, default=None, help="first day no longer in force (default: never)")
    gra.add_argument("--recurring", choices=("monthly",), default=None, help="the amount anew each billing period")
    gra.add_argument(
        "--rollover-limit", type=_units, default=None, help="with --recurring: unused amount carried, at most"
    )
    gra.add_argument("--name", default="", help="a short name shown on invoices")
    gra.add_argument("--reason", required=True, help="why (kept with the grant)")
    grl = command(gr, "list", cmd_grants, "grants in the order they were added, with their balances today")
    grl.add_argument("--account", default=None, help="one account's grants")
    grv = command(gr, "void", cmd_grants, "void a grant: later runs burn nothing of it (never deleted)")
    grv.add_argument("id", type=_positive, help="the grant's id")
    grv.add_argument("--reason", required=True, help="why (kept with the grant)")
    for gp in (gra, grl, grv):
        _output(gp)

    bal = command(sub, "balance", cmd_balance)
    bal.add_argument("account", help="account code")
    bal.add_argument("--on", type=_day, default=None, help="the balance on this day (default today, UTC)")
    _output(bal)
    pr = group("products")
    prl = command(pr, "load", cmd_products, "load products from a YAML file (idempotent; a changed one: a new version)")
    prl.add_argument("file", type=Path, help="the YAML file (schema files are read relative to it)")
    prs = command(pr, "list", cmd_products, "each product's newest version")
    prs.add_argument("--account", default=None, help="only the products of this account's plan")
    prw = command(pr, "show", cmd_products, "one product with its schemas (the API contract)")
    prw.add_argument("code", help="the product's code")
    prw.add_argument("--version", type=_positive, default=None, help="a version (default: the newest)")
    prw.add_argument("--account", default=None, help="as this account sees it (its access and subscription)")
    prsub = command(pr, "subscribe", cmd_products, "subscribe an account (self-service plan: at once; else a request)")
    prsub.add_argument("account", help="account code")
    prsub.add_argument("code", help="the product's code")
    prq = command(pr, "requests", cmd_products, "product subscriptions and requests, oldest first")
    prq.add_argument(
        "--status", choices=("requested", "active", "rejected", "cancelled"), default=None, help="only these"
    )
    prq.add_argument("--account", default=None, help="one account's")
    pra = command(pr, "approve", cmd_products, "approve a request: the subscription is active, its topics granted")
    pra.add_argument("id", type=_positive, help="the request's id")
    prj = command(pr, "reject", cmd_products, "reject a request, with the reason")
    prj.add_argument("id", type=_positive, help="the request's id")
    prj.add_argument("--reason", required=True, help="why (kept with the request, shown to the partner)")
    pru = command(pr, "unsubscribe", cmd_products, "cancel an account's subscription (or request) to a product")
    pru.add_argument("account", help="account code")
    pru.add_argument("code", help="the product's code")
    for pp_ in (prl, prs, prw, prsub, prq, pra, prj, pru):
        _output(pp_)

    stm = command(sub, "statements", cmd_statements)
    stm.add_argument("--account", required=True, help="account code")
    stm.add_argument("--period", type=_period, required=True, help="YYYY-MM")
    stm.add_argument(
        "--out", default=None, help="file to write (default: standard output; PDF: statement-ACCOUNT-PERIOD.pdf)"
    )
    _output(stm, (*FORMATS, "pdf"))
    stm.add_argument("--format", dest="output", choices=(*FORMATS, "pdf"), help=argparse.SUPPRESS)  # before 0.2

    tp = command(sub, "top", cmd_top)
    tp.add_argument("--url", default=None, help="API base URL (default http://STREAMTOLL_API_BIND)")
    tp.add_argument("--key", default=None, help="ops or finance API key (default STREAMTOLL_API_KEY)")
    tp.add_argument("--every", type=float, default=3.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print the tables once and exit")
    _output(tp, ("table", "json"))

    st = command(sub, "settings", cmd_settings)
    st.add_argument("--all", action="store_true", help="include the settings for developers and tests")
    _output(st)

    b = command(sub, "broker", cmd_broker)
    b.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    bench = group("bench")
    bi = command(bench, "ingest", cmd_bench_ingest, "worker throughput on proxy audit records vs. a raw consumer")
    bi.add_argument("--events", type=_positive, default=1_000_000, help="records to meter")
    bi.add_argument("--workers", type=_positive, default=1, help="worker processes")
    bi.add_argument(
        "--reference",
        action="store_true",
        help="also meter the input with the per-record scan (what the batch scan replaced), same run",
    )
    bm = command(
        bench,
        "memory",
        cmd_bench_memory,
        "worker RSS holding N live series; with --hours, a history: RSS, state per snapshot round, restart",
    )
    bm.add_argument(
        "--series",
        type=_positive,
        default=None,
        help="series (principal, client id, topic) to hold (default 100,000; 1,000 with --hours)",
    )
    bm.add_argument(
        "--hours",
        type=_positive,
        default=None,
        help="a history instead: every series has produce and fetch traffic in each of the last N hours "
        "(N up to STREAMTOLL_MAX_LATENESS, 840 hours by default); reports RSS, state topic bytes per "
        "snapshot round and the restart time after kill -9",
    )
    bm.add_argument(
        "--snapshot-interval",
        type=_positive,
        default=None,
        help="with --hours: the worker's STREAMTOLL_STATE_SNAPSHOT_INTERVAL in seconds (default 30)",
    )
    _output(bm, ("table", "json"))
    bg = command(bench, "gateway", cmd_bench_gateway, "produce and consume throughput through the gateway vs direct")
    bg.add_argument("--messages", type=_positive, default=300_000, help="records per leg")
    bg.add_argument("--size", type=_positive, default=200, help="value bytes per record")
    bb = command(bench, "billing", cmd_bench_billing, "a billing run over many accounts with a month of hourly usage")
    bb.add_argument("--accounts", type=_positive, default=1000, help="accounts to bill")
    bb.add_argument("--clients", type=_positive, default=1, help="clients per account")
    ba = command(bench, "api", cmd_bench_api, "p50/p99 of the statement and usage endpoints for one account-month")
    ba.add_argument("--clients", type=_positive, default=1000, help="clients of the account")
    ba.add_argument("--requests", type=_positive, default=200, help="requests per scenario")
    return p


# -- entry point -------------------------------------------------------------------------------


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def _environment_problems() -> list[str]:
    problems = unknown_settings(os.environ)
    try:
        embedded_mode(os.environ)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or os.environ.get("STREAMTOLL_LOG_LEVEL") or "INFO"
    try:
        args.log_level = _log_level(level)
    except argparse.ArgumentTypeError as exc:
        print(f"streamtoll: STREAMTOLL_LOG_LEVEL: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level)
    if problems := _environment_problems():
        print("streamtoll: invalid settings:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_USAGE
    # SIGTERM unwinds like Ctrl-C, so embedded children are stopped by their finally blocks
    # (commands with a graceful stop of their own replace this handler).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # the reader went away (`… | head`): stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except UserError as exc:
        print(f"streamtoll: {exc}", file=sys.stderr)
        return exc.exit_code
    except (EmbeddedError, MeteringError) as exc:
        print(f"streamtoll: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
