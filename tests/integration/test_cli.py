"""The command line against a real PostgreSQL: machine output on every data command, the
documented exit codes, the schema check against the migrations' head, and embedded parts that
announce themselves."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.adapters.db import upgrade
from streamtoll.embedded import free_port

pytestmark = pytest.mark.integration


def _cli(args: list[str], cwd: Path | None = None, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env.update({f"STREAMTOLL_{k}": v for k, v in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _ok(args: list[str], url: str) -> str:
    out = _cli(args, DATABASE_URL=url)
    assert out.returncode == 0, (args, out.stderr[-1500:])
    assert "Traceback" not in out.stderr
    return out.stdout


def test_every_data_command_prints_table_json_and_csv(engine: sa.Engine, migrated: str) -> None:
    accounts = list(csv.DictReader(io.StringIO(_ok(["accounts", "list", "--on", "2026-11-15", "-o", "csv"], migrated))))
    assert [(a["code"], a["plan"]) for a in accounts] == [
        ("acme", "growth v1"),
        ("globex", "enterprise v1"),
        ("initech", "starter-usd v1"),
    ]
    plans = json.loads(_ok(["plans", "list", "--json"], migrated))
    assert {p["code"]: p["latest_version"] for p in plans} == {"growth": 1, "enterprise": 1, "starter-usd": 1}
    table = _ok(["accounts", "list"], migrated).splitlines()
    assert table[0].split()[:3] == ["CODE", "NAME", "CURRENCY"] and len(table) == 4

    created = json.loads(_ok(["keys", "create", "--role", "partner", "--account", "acme", "-o", "json"], migrated))
    assert created["key"].startswith(f"stk_{created['key_id']}_") and created["account"] == "acme"
    listed = _ok(["keys", "list", "-o", "json"], migrated)
    assert created["key_id"] in listed and created["key"] not in listed  # never the secret
    assert json.loads(_ok(["keys", "revoke", created["key_id"], "--json"], migrated))["revoked"] is True
    assert json.loads(_ok(["keys", "list", "--json"], migrated)) == []
    assert len(json.loads(_ok(["keys", "list", "--all", "--json"], migrated))) == 1

    bill = list(csv.DictReader(io.StringIO(_ok(["bill", "--period", "2026-11", "--csv"], migrated))))
    acme = next(b for b in bill if b["account"] == "acme")
    assert (acme["status"], acme["currency"], acme["total"]) == ("draft", "EUR", "199.92")
    invoices = json.loads(_ok(["invoices", "list", "--period", "2026-11", "-o", "json"], migrated))
    draft = next(i for i in invoices if i["account"] == "acme")
    shown = _ok(["invoices", "show", f"draft-{draft['id']}"], migrated)
    assert "199.92" in shown and "DESCRIPTION" in shown
    finalized = json.loads(_ok(["invoices", "finalize", f"draft-{draft['id']}", "-o", "json"], migrated))
    assert finalized["number"].startswith("INV-") and finalized["total"] == "199.92"
    again = json.loads(_ok(["invoices", "show", finalized["number"], "--json"], migrated))
    assert again["status"] == "finalized" and again["total"] == "199.92"

    usage = _ok(
        ["usage", "--from", "2030-01-01", "--to", "2030-01-02", "--group-by", "account,topic", "--csv"], migrated
    )
    assert usage == "account,topic,bytes,records,requests,denied_requests\n"  # no rows: still the header
    assert json.loads(_ok(["usage", "--from", "2030-01-01", "--to", "2030-01-02", "-o", "json"], migrated)) == []
    statement = json.loads(_ok(["statements", "--account", "acme", "--period", "2026-11", "-o", "json"], migrated))
    assert statement["rated_so_far"]["total"] == "199.92"
    assert "rated so far" in _ok(["statements", "--account", "acme", "--period", "2026-11"], migrated)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["invoices", "show", "INV-2026-999999"], "there is no invoice"),
        (["invoices", "pdf", "draft-999999"], "there is no invoice"),
        (["keys", "revoke", "nosuchkey"], "there is no active key"),
        (["keys", "create", "--account", "nope"], "there is no account 'nope'"),
        (["statements", "--account", "nope", "--period", "2026-11"], "there is no account 'nope'"),
    ],
)
def test_not_found_is_exit_code_3(engine: sa.Engine, migrated: str, args: list[str], says: str) -> None:
    out = _cli(args, DATABASE_URL=migrated)
    assert out.returncode == 3, out.stderr[-1500:]
    assert says in out.stderr and "Traceback" not in out.stderr


def test_an_unreachable_database_is_exit_code_5(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/streamtoll?connect_timeout=2"
    for args in (["bill", "--period", "2026-11"], ["db", "upgrade"], ["db", "current"]):
        out = _cli(args, tmp_path, DATABASE_URL=url)
        assert out.returncode == 5, (args, out.stderr[-1500:])
        assert "the database is unreachable" in out.stderr and "Traceback" not in out.stderr


def test_the_schema_must_be_this_codes_head(database: str) -> None:
    out = _cli(["invoices", "list"], DATABASE_URL=database)
    assert out.returncode == 2 and "has no streamtoll schema yet; run `streamtoll db upgrade`" in out.stderr
    upgrade(database, "0007")
    out = _cli(["invoices", "list"], DATABASE_URL=database)
    assert out.returncode == 2, out.stderr
    assert "the database schema is at revision 0007" in out.stderr and "run `streamtoll db upgrade`" in out.stderr
    behind = _cli(["db", "current", "-o", "json"], DATABASE_URL=database)
    assert behind.returncode == 1 and json.loads(behind.stdout)["current"] == "0007"
    upgrade(database)
    assert _cli(["invoices", "list"], DATABASE_URL=database).returncode == 0
    engine = sa.create_engine(database)
    with engine.begin() as conn:  # as a newer streamtoll would leave it
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    out = _cli(["invoices", "list"], DATABASE_URL=database)
    assert out.returncode == 2 and "revision 0099, which this streamtoll does not know" in out.stderr


def test_an_embedded_part_says_so_in_the_log(tmp_path: Path) -> None:
    out = _cli(["db", "current", "-o", "json"], tmp_path)
    assert out.returncode == 1, out.stderr  # a new embedded database has no schema yet
    said = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(
        d["level"] == "warning" and "embedded PostgreSQL" in d["msg"] and "STREAMTOLL_DATABASE_URL is unset" in d["msg"]
        for d in said
    ), out.stderr
    assert (tmp_path / ".streamtoll" / "pg").is_dir()
