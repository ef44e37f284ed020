"""Shadow runs on a real PostgreSQL through the command line: the samples' November rated under a
candidate plan beside the real invoices, every table byte-for-byte the same afterwards.

Real totals (test_billing.py works them out): acme 199.92 EUR, globex 2200.00 EUR, initech 106.16 USD.
"""

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

from billing.services.billing_run import run_billing

from .seed import DEC1

pytestmark = pytest.mark.integration


def _cli(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env["STREAMTOLL_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def dump(engine: sa.Engine) -> dict[str, list[str]]:
    """Every row of every table, as PostgreSQL prints it (bytea as hex), in a stable order."""
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        ).scalars()
        return {t: list(conn.execute(sa.text(f'SELECT x::text FROM "{t}" x ORDER BY 1')).scalars()) for t in tables}


def shadow(url: str, *args: str, code: int = 0) -> str:
    out = _cli(["bill", "--period", "2026-11", "--shadow", *args], url)
    assert out.returncode == code, out.stderr[-1500:]
    assert "Traceback" not in out.stderr
    return out.stdout


def test_a_shadow_run_prints_real_and_candidate_totals_and_changes_nothing(
    engine: sa.Engine, migrated: str, tmp_path: Path
) -> None:
    # before any billing run the real side is the period rated now, as the run will bill it
    rated = json.loads(shadow(migrated, "--plan", "enterprise", "--accounts", "acme", "-o", "json"))
    assert [(r["real_from"], r["invoice"], r["real_total"]) for r in rated] == [("rated", None, "199.92")]

    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    before = dump(engine)
    assert len(before["invoices"]) == 3 and len(before["invoice_lines"]) > 3

    rows = json.loads(shadow(migrated, "--plan", "enterprise@1", "-o", "json", code=1))
    got = {
        r["account"]: (r["real_from"], r["invoice"], r["real_total"], r["shadow_total"], r["difference"]) for r in rows
    }
    assert got == {
        # enterprise on acme's 30 days: base 2500.00 + produce 1.25 TB volume at 40.00 = 50.00 + consume
        # 2 TB of orders (not premium.*) × 5.00 = 10.00; records unpriced → 2560.00, tax 19 % 486.40
        # → 3046.40; 3046.40 − 199.92 = 2846.48
        "acme": ("finalized", "INV-2026-000001", "199.92", "3046.40", "2846.48"),
        # its own plan on its own days (from the 10th): the same 2200.00
        "globex": ("finalized", "INV-2026-000002", "2200.00", "2200.00", "0.00"),
        # billed in USD, the candidate is in EUR: not compared (exit code 1)
        "initech": ("finalized", "INV-2026-000003", "106.16", None, None),
    }
    assert rows[2]["note"] == "the candidate is priced in EUR, the account is billed in USD"
    assert {r["shadow_plan"] for r in rows} == {"enterprise v1"}

    candidate = tmp_path / "plans-candidate.yaml"
    candidate.write_text(
        (Path(__file__).parents[2] / "streamtoll" / "samples" / "plans.yaml")
        .read_text(encoding="utf-8")
        .replace('base_fee: "49.00"', 'base_fee: "59.00"')
        .replace('unit_price: "0.02"', 'unit_price: "0.03"'),
        encoding="utf-8",
    )
    out = shadow(migrated, "--plan-file", str(candidate), "--plan", "growth", "--accounts", "acme,globex", "-o", "csv")
    table = {
        r["account"]: (r["real_total"], r["shadow_total"], r["difference"]) for r in csv.DictReader(io.StringIO(out))
    }
    assert table == {
        # growth with base 59.00 and consume 0.03: 59.00 + produce 84.50 + consume 1500 × 0.03 = 45.00
        # + records 4.50 → 193.00 (over the 100.00 minimum), tax 19 % 36.67 → 229.67; − 199.92 = 29.75
        "acme": ("199.92", "229.67", "29.75"),
        # on globex's 21 of 30 days: base 59.00 × 21/30 = 41.30, minimum 70.00; produce 12,000 GB
        # graduated 100 × 0 + 900 × 0.08 = 72.00 + 11,000 × 0.05 = 550.00; consume 6,000 − 500 GB
        # × 0.03 = 165.00; records 0 → 828.30 (over 70.00), no tax; 828.30 − 2200.00 = −1371.70
        "globex": ("2200.00", "828.30", "-1371.70"),
    }

    after = dump(engine)
    assert after == before  # every row of every table: invoices, lines, numbers, documents


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--period", "2026-11", "--shadow", "--plan", "premium"], 3, "there is no plan 'premium' in the catalog"),
        (
            ["--period", "2026-11", "--shadow", "--plan", "growth@7"],
            3,
            "plan 'growth' has no version '7' (it has v1 to v1)",
        ),
        (
            ["--period", "2026-11", "--shadow", "--plan", "growth", "--accounts", "nope"],
            3,
            "there is no account 'nope'",
        ),
        (["--period", "2026-10", "--shadow", "--plan", "growth"], 2, "there is no usage in 2026-10"),
        (["--period", "2026-11", "--plan", "growth"], 2, "add --shadow"),
        (["--period", "2026-11", "--shadow"], 2, "needs the candidate"),
        (
            ["--period", "2026-11", "--shadow", "--finalize", "--plan", "growth"],
            2,
            "--finalize cannot go with --shadow",
        ),
    ],
)
def test_shadow_mistakes_are_one_sentence(
    engine: sa.Engine, migrated: str, args: list[str], code: int, says: str
) -> None:
    before = dump(engine)
    out = _cli(["bill", *args], migrated)
    assert out.returncode == code, out.stderr[-1500:]
    assert says in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""
    assert dump(engine) == before


def test_the_shadow_run_reads_in_a_read_only_transaction(engine: sa.Engine) -> None:
    from billing.adapters.uow import read_only

    with read_only(engine)() as uow:
        assert uow.conn.execute(sa.text("SHOW transaction_read_only")).scalar_one() == "on"
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            uow.invoices.current("acme", DEC1.date())  # a row lock (SELECT … FOR UPDATE) is refused, as any write
    with engine.connect() as conn:  # the pool's connections are not left read-only
        assert conn.execute(sa.text("SHOW transaction_read_only")).scalar_one() == "off"
