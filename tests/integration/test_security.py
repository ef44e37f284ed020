"""Security on the real stack: hostile strings through every API parameter change nothing and
never fail the server; API keys never reach a log; the database roles of deploy/postgres/roles.sql
keep the API away from usage rows and finalized invoices; hostile catalog files change nothing."""

from __future__ import annotations

import ast
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, ProgrammingError

from billing.adapters.db import schema_state
from billing.adapters.sink import upsert_episodes, upsert_windows
from billing.api.app import create_app
from billing.services.billing_run import run_billing
from billing.services.keys import create_key, revoke_key
from billing.services.live import read_base
from billing.settings import BillingSettings
from metering.contracts import UsageWindow
from metering.entitlements import Episode
from streamtoll.serving import running

from .harness import api_server
from .seed import DEC1

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
HOSTILE = [
    "acme' OR '1'='1",
    "'; DROP TABLE invoices; --",
    'acme"; DELETE FROM usage_shard_rows; --',
    "1; UPDATE invoices SET total = 0",
    "../../etc/passwd",
    "%00",
    "\u202eacme",
    "ａｃｍｅ",
    "a" * 5000,
    "$(reboot)",
    "{{7*7}}",
    "2026-13",
    "-1",
    "99999999999999999999999",
]
TABLES = [
    "accounts",
    "client_rules",
    "plans",
    "plan_versions",
    "subscriptions",
    "usage_shard_rows",
    "invoices",
    "invoice_lines",
    "invoice_numbers",
    "api_keys",
]


def _fingerprint(engine: sa.Engine) -> dict[str, object]:
    with engine.connect() as conn:
        out: dict[str, object] = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
        out["invoice_totals"] = conn.execute(sa.text("SELECT sum(total), sum(subtotal) FROM invoices")).one()
        out["usage_bytes"] = conn.execute(sa.text("SELECT sum(bytes) FROM usage_shard_rows")).scalar_one()
    return out


@pytest.fixture
def keys(engine: sa.Engine) -> dict[str, str]:
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    run_billing(engine, "2026-12")
    return {"acme": create_key(engine, "partner", "acme"), "finance": create_key(engine, "finance", None)}


def test_hostile_strings_through_every_parameter_change_nothing(engine: sa.Engine, keys: dict[str, str]) -> None:
    before = _fingerprint(engine)
    tries = 0
    # the per-key limits off: they would only make this wait (test_api_limits tests them)
    with running(create_app(engine, BillingSettings(api_limits={}), auth_limit=100_000)) as base:
        for key in (keys["acme"], keys["finance"]):
            auth = {"Authorization": f"Bearer {key}"}
            for s in HOSTILE:
                requests = [
                    ("GET", "/v1/invoices", {"account": s}),
                    ("GET", "/v1/invoices", {"period": s}),
                    ("GET", f"/v1/invoices/{s}", {}),
                    ("GET", f"/v1/invoices/{s}/pdf", {}),
                    ("GET", f"/v1/statements/{s}", {}),
                    ("GET", "/v1/statements/2026-11", {"account": s}),
                    ("GET", "/v1/statements/2026-11", {"format": s}),
                    ("GET", "/v1/usage", {"from": s, "to": "2026-12-01"}),
                    ("GET", "/v1/usage", {"from": "2026-11-01", "to": "2026-12-01", "group_by": s}),
                    ("GET", "/v1/usage", {"from": "2026-11-01", "to": "2026-12-01", "account": s}),
                    ("GET", "/v1/usage", {"from": "2026-11-01", "to": "2026-12-01", "granularity": s}),
                    ("POST", "/v1/billing/runs", {"period": s}),
                    ("POST", f"/v1/invoices/{s}/finalize", {}),
                    ("POST", f"/v1/invoices/{s}/void", {"reason": s}),
                    ("POST", "/v1/invoices/INV-2026-000001/void", {"reason": s}) if key == keys["acme"] else None,
                ]
                for req in requests:
                    if req is None:
                        continue
                    method, path, params = req
                    r = httpx.request(method, base + path, params=params, headers=auth, timeout=60)
                    tries += 1
                    assert r.status_code in (200, 403, 404, 405, 409, 422), (
                        method,
                        path,
                        params,
                        r.status_code,
                        r.text,
                    )
                    if r.status_code >= 400:  # every error is a problem (RFC 9457)
                        assert r.headers["content-type"] == "application/problem+json", (path, r.text[:200])
                    if r.status_code == 200 and key == keys["acme"]:
                        assert "globex" not in r.text and "initech" not in r.text, (path, params)
    assert tries > 300
    assert _fingerprint(engine) == before


def test_sql_is_built_from_constants_only() -> None:
    """Every ``text(...)`` SQL in the packages is a constant, or an f-string whose only
    interpolations are names reviewed as not user input (listed here)."""
    # usage_rows: 'hour' or a constant expression; a table name from a constant list; a database
    # name checked against [a-z0-9_] (CREATE DATABASE takes no bound parameter)
    reviewed = {"bucket", "t", "name"}
    found = 0
    for path in [*ROOT.glob("billing/**/*.py"), *ROOT.glob("streamtoll/**/*.py"), *ROOT.glob("metering/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "text":
                for arg in node.args:
                    found += 1
                    if isinstance(arg, ast.JoinedStr):
                        names = {
                            n.id
                            for v in arg.values
                            if isinstance(v, ast.FormattedValue)
                            for n in ast.walk(v.value)
                            if isinstance(n, ast.Name)
                        }
                        assert names <= reviewed, f"{path}:{node.lineno} builds SQL from {names - reviewed}"
                    else:
                        assert isinstance(arg, ast.Constant | ast.BinOp), f"{path}:{node.lineno}: SQL from a variable"
    assert found > 5


def test_the_role_switch_of_these_tests_takes_effect(roles: sa.Engine, migrated: str) -> None:
    api_db = _as("streamtoll_api", migrated)
    try:
        with api_db.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar_one() == "streamtoll_api"
    finally:
        api_db.dispose()


def test_api_keys_never_appear_in_logs(engine: sa.Engine, keys: dict[str, str], tmp_path: Path, migrated: str) -> None:
    revoked = create_key(engine, "partner", "acme")
    revoke_key(engine, revoked.split("_")[1])
    secrets_ = [k.split("_", 2)[2] for k in (*keys.values(), revoked)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env["STREAMTOLL_DATABASE_URL"] = migrated
    log = tmp_path / "api.log"
    with api_server(env, log, "--log-level", "DEBUG") as base:
        for key in [*keys.values(), revoked, keys["acme"] + "x", keys["finance"][:-3]]:
            for path in ("/v1/invoices", "/v1/statements/2026-11", "/v1/invoices/INV-2026-000001/pdf", "/nope"):
                httpx.get(base + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
                httpx.get(base + path, params={"api_key": key}, timeout=30)  # a key in the wrong place
        cli = subprocess.run(
            [sys.executable, "-m", "streamtoll.cli", "--log-level", "DEBUG", "keys", "create", "--role", "finance"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0
        new_secret = cli.stdout.strip().split("_", 2)[2]
    text = log.read_text() + cli.stderr
    assert "streamtoll API on http" in text  # the log was captured (it has the start line)
    for s in [*secrets_, new_secret]:
        assert s not in text, "an API key secret reached a log"


# --- database roles --------------------------------------------------------------------------


@pytest.fixture
def roles(engine: sa.Engine) -> Iterator[sa.Engine]:
    with engine.begin() as conn:
        conn.exec_driver_sql((ROOT / "deploy" / "postgres" / "roles.sql").read_text())
    yield engine


def _as(role: str, url: str) -> sa.Engine:
    e = sa.create_engine(url)

    @sa.event.listens_for(e, "connect")
    def set_role(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET ROLE {role}")  # a constant, not input
        dbapi_conn.commit()  # a SET inside a transaction that is rolled back would not stick

    return e


def _refused(engine: sa.Engine, sql: str) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    except (ProgrammingError, DBAPIError) as exc:
        return "permission denied" in str(exc) or "cannot be" in str(exc)
    return False


def test_the_api_role_reads_and_bills_but_cannot_touch_usage_or_finalized_invoices(
    roles: sa.Engine, migrated: str
) -> None:
    api_db = _as("streamtoll_api", migrated)
    try:
        # everything the API does works as that role …
        finance = create_key(roles, "finance", None)
        with running(create_app(api_db, auth_limit=1000)) as base:
            auth = {"Authorization": f"Bearer {finance}"}
            run = httpx.post(
                base + "/v1/billing/runs",
                params={"period": "2026-11", "finalize": "true"},
                headers={**auth, "Idempotency-Key": "run-2026-11"},  # the role keeps idempotency keys
                timeout=120,
            )
            assert run.status_code == 200, run.text
            number = next(r["number"] for r in run.json() if r["account"] == "acme")
            assert httpx.get(base + f"/v1/invoices/{number}/pdf", headers=auth, timeout=30).status_code == 200
            assert (
                httpx.get(
                    base + "/v1/statements/2026-11", params={"account": "acme"}, headers=auth, timeout=60
                ).status_code
                == 200
            )
            voided = httpx.post(
                base + f"/v1/invoices/{number}/void",
                params={"reason": "test"},
                headers={**auth, "Idempotency-Key": "void-1"},
                timeout=30,
            )
            assert voided.status_code == 200
            again = httpx.post(
                base + f"/v1/invoices/{number}/void",
                params={"reason": "test"},
                headers={**auth, "Idempotency-Key": "void-1"},
                timeout=30,
            )
            assert again.content == voided.content and again.headers["idempotent-replayed"] == "true"
            # drafts recomputed in place (lines replaced), then one finalized alone, as the API does
            for _ in range(2):
                drafts = httpx.post(base + "/v1/billing/runs", params={"period": "2026-11"}, headers=auth, timeout=120)
                assert drafts.status_code == 200, drafts.text
            draft = next(r["ref"] for r in drafts.json() if r["account"] == "acme")
            done = httpx.post(base + f"/v1/invoices/{draft}/finalize", headers=auth, timeout=60)
            assert done.status_code == 200, done.text
            for path, params in (
                ("/v1/invoices", {"period": "2026-11"}),
                (f"/v1/invoices/{done.json()['number']}", {}),
                ("/v1/usage", {"from": "2026-11-01", "to": "2026-12-01", "account": "acme"}),
                ("/v1/usage", {"from": "2026-11-20", "to": "2026-11-21", "granularity": "hour", "account": "acme"}),
                ("/metrics", {}),
                ("/healthz", {}),
            ):
                answer = httpx.get(base + path, params=params, headers=auth, timeout=60)
                assert answer.status_code == 200, (path, answer.text)
            assert 'streamtoll_invoices{status="finalized"}' in httpx.get(base + "/metrics", timeout=30).text
            # Kafka credentials issued, rotated and revoked, and entitlements read, as that role
            cred = httpx.post(base + "/v1/credentials", params={"account": "acme"}, headers=auth, timeout=30)
            assert cred.status_code == 200, cred.text
            for action in ("rotate", "revoke"):
                done = httpx.post(base + f"/v1/credentials/{cred.json()['id']}/{action}", headers=auth, timeout=30)
                assert done.status_code == 200, (action, done.text)
            ents = httpx.get(base + "/v1/entitlements", params={"account": "acme"}, headers=auth, timeout=30)
            assert ents.status_code == 200 and ents.json()["credentials"][0]["state"] == "revoked", ents.text
        # the live view's database side (usage and the rated month) reads as that role too
        read_base(api_db, DEC1.timestamp())
        # … and what it must never do is refused by the database itself
        attempts = [
            "UPDATE usage_shard_rows SET bytes = 0",
            "DELETE FROM usage_shard_rows",
            "INSERT INTO usage_shard_rows SELECT * FROM usage_shard_rows LIMIT 1",
            "TRUNCATE usage_shard_rows",
            "UPDATE invoices SET total = 0 WHERE status <> 'draft'",
            "DELETE FROM invoices",
            "UPDATE invoice_lines SET amount = 0",
            "DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM invoices WHERE status <> 'draft')",
            "UPDATE accounts SET tax_rate = 0",
            "UPDATE plan_versions SET document = '{}'",
            "INSERT INTO api_keys (key_id, secret_sha256, role) VALUES ('x', 'y', 'finance')",
            "UPDATE api_keys SET revoked_at = NULL",
            "DELETE FROM credential_keys",
            "DELETE FROM credentials",
            # amendments are imported from an operator's shell (the owner), never by the API
            "INSERT INTO amendments (kind, range_from, range_to, reason, actor, created_at) "
            "VALUES ('import', now(), now() + interval '1 hour', 'x', 'x', now())",
            "INSERT INTO usage_amendment_rows SELECT * FROM usage_amendment_rows LIMIT 1",
        ]
        refused = [sql for sql in attempts if _refused(api_db, sql)]
        assert refused == attempts
    finally:
        api_db.dispose()


def test_the_sink_role_writes_usage_and_nothing_else(roles: sa.Engine, migrated: str) -> None:
    sink_db = _as("streamtoll_sink", migrated)
    try:
        w = UsageWindow(
            "2026-11-20T10:00:00.000Z",
            "",
            "proxy",
            None,
            "User:acme-x",
            "",
            "",
            "orders",
            "produce",
            5,
            1,
            1,
            0,
            10**12,
            "p/9",
        )
        assert upsert_windows(sink_db, [w]) == 1
        # a newer version of the same row: an UPDATE, through the triggers of the daily table
        # and the statements' change marks (they write as the owner)
        daily = sa.text("SELECT sum(bytes) FROM usage_daily WHERE principal = 'User:acme-x' AND day = '2026-11-20'")
        with roles.connect() as conn:
            before = conn.execute(daily).scalar_one()
        assert upsert_windows(sink_db, [dataclasses.replace(w, bytes=7, version=w.version + 1)]) == 1
        with roles.connect() as conn:
            assert conn.execute(daily).scalar_one() == before + 2
        # the gateways' throttle and block episodes, a newer record of one replacing it
        at = datetime(2026, 11, 20, 10, tzinfo=UTC)
        episode = Episode("gw/acme/1", "gw", "acme", "block", "produce", "cap", "cap", at, at)
        with roles.begin() as conn:  # an endpoint of acme's: the episode's quota events are queued to it
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_endpoints (id, account_code, url, secret, event_types) "
                    "VALUES ('whe_1', 'acme', 'https://hooks.example/', 'whsec_x', "
                    "ARRAY['quota.blocked', 'quota.released'])"
                )
            )
        assert upsert_episodes(sink_db, [episode]) == 1
        assert (
            upsert_episodes(sink_db, [dataclasses.replace(episode, updated=at + timedelta(seconds=1), ended=at)]) == 1
        )
        with roles.connect() as conn:
            assert conn.execute(sa.text("SELECT ended_at FROM enforcement_episodes")).scalar_one() == at
            queued = conn.execute(
                sa.text(
                    "SELECT v.type FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id ORDER BY d.id"
                )
            ).scalars()
            assert list(queued) == ["quota.blocked", "quota.released"]
        assert schema_state(sink_db).is_current  # the sink checks the schema version at start
        for sql in (
            "UPDATE invoices SET total = 0",
            "SELECT * FROM api_keys",
            "DELETE FROM accounts",
            "SELECT secret FROM webhook_endpoints",
            "UPDATE webhook_deliveries SET status = 'delivered'",
        ):
            assert _refused(sink_db, sql), sql
    finally:
        sink_db.dispose()


def test_the_logins_of_logins_sql_connect_in_their_roles(roles: sa.Engine, migrated: str) -> None:
    """deploy/postgres/logins.sql (run by psql, as deploy/compose.yaml does, twice: idempotent)
    makes the sink's and the API's logins; each connects with its password and acts in its role."""
    psql = shutil.which("psql")
    assert psql is not None, "psql is missing: `make test` installs it (postgresql-client)"
    url = sa.make_url(migrated)
    passwords = {"sink": secrets.token_hex(8), "api": secrets.token_hex(8)}
    sql = ROOT / "deploy" / "postgres"
    args = [psql, url.set(drivername="postgresql").render_as_string(hide_password=False), "-q"]
    args += ["-v", "ON_ERROR_STOP=1", "-v", f"sink_password={passwords['sink']}"]
    args += ["-v", f"api_password={passwords['api']}", "-f", str(sql / "roles.sql"), "-f", str(sql / "logins.sql")]
    for _ in range(2):
        subprocess.run(args, check=True, capture_output=True, timeout=60)
    sink = sa.create_engine(url.set(username="streamtoll_sink_login", password=passwords["sink"]))
    api = sa.create_engine(url.set(username="streamtoll_api_login", password=passwords["api"]))
    try:
        w = UsageWindow(
            "2026-11-21T10:00:00.000Z",
            "",
            "proxy",
            None,
            "User:acme-y",
            "",
            "",
            "orders",
            "consume",
            3,
            1,
            1,
            0,
            1,
            "p/1",
        )
        assert upsert_windows(sink, [w]) == 1
        assert _refused(sink, "SELECT * FROM api_keys")
        with api.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM usage_shard_rows")).scalar_one() > 0
        assert _refused(api, "DELETE FROM usage_shard_rows")
    finally:
        sink.dispose()
        api.dispose()
        with roles.begin() as conn:
            conn.execute(sa.text("DROP ROLE IF EXISTS streamtoll_sink_login, streamtoll_api_login"))


ADVERSARIAL_YAML = {
    "deep.yaml": "accounts: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "laughs.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True))
    + "accounts: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\nplans: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n",
    "python-tag.yaml": "accounts: !!python/object/apply:os.system ['echo pwned']\n",
    "binary.yaml": "\x00\x01\x02\ufffe garbage \x7f",
    "not-a-mapping.yaml": "- just\n- a\n- list\n",
    "hostile-values.yaml": 'accounts:\n  - code: "acme\'; DROP TABLE accounts; --"\n    name: [1, 2]\n'
    "    currency: 12\n    tax_rate: 1e400\n    clients: {principal: 5}\n"
    'plans:\n  - code: "x\\u0000y"\n    currency: EUR\n    prices: 7\n',
}


@pytest.mark.parametrize("kind", ["accounts", "plans"])
def test_hostile_catalog_files_change_nothing_and_say_why(
    engine: sa.Engine, migrated: str, tmp_path: Path, kind: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env["STREAMTOLL_DATABASE_URL"] = migrated
    before = _fingerprint(engine)
    for name, content in ADVERSARIAL_YAML.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8", errors="surrogateescape")
        done = subprocess.run(
            [sys.executable, "-m", "streamtoll.cli", kind, "load", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (name, done.stdout, done.stderr[-1500:])
        assert "Traceback" not in done.stderr, (name, done.stderr[-1500:])
        assert "nothing changed" in done.stderr or "streamtoll:" in done.stderr, (name, done.stderr[-500:])
        assert "pwned" not in done.stdout + done.stderr
    assert _fingerprint(engine) == before


def test_random_parameters_never_fail_the_server(engine: sa.Engine, keys: dict[str, str]) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    before = _fingerprint(engine)
    text = st.text(max_size=60)
    with running(create_app(engine, auth_limit=100_000)) as base, httpx.Client(timeout=60) as client:
        auth = {"Authorization": f"Bearer {keys['finance']}"}

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(text, text, text, st.sampled_from(["usage", "invoice", "statement", "list"]))
        def check(a: str, b: str, c: str, which: str) -> None:
            if which == "usage":
                r = client.get(base + "/v1/usage", params={"from": a, "to": b, "group_by": c}, headers=auth)
            elif which == "invoice":
                r = client.get(base + "/v1/invoices/" + quote(a, safe=""), headers=auth)
            elif which == "statement":
                r = client.get(base + "/v1/statements/" + quote(a, safe=""), params={"account": b}, headers=auth)
            else:
                r = client.get(base + "/v1/invoices", params={"period": a, "account": b}, headers=auth)
            assert r.status_code < 500, (which, a, b, c, r.status_code, r.text[:300])

        check()
    assert _fingerprint(engine) == before
