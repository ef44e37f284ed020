"""`streamtoll demo` on embedded defaults: exits 0, and what it bills equals the ground truth
of the traffic it generated, recomputed here from the same seed and attributed by hand; its
gateway leg bills what real clients sent through the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from metering.settings import MeteringSettings
from streamtoll.dev.demo import default_period, demo_traffic
from streamtoll.dev.demo_gateway import CLIENTS

pytestmark = pytest.mark.integration


def _account(principal: str, day: date) -> str:
    """The sample client rules, written out by hand (globex's rule starts on 2026-11-10)."""
    if principal.startswith("User:acme-"):
        return "acme"
    if principal.startswith("User:initech-"):
        return "initech"
    if principal == "User:globex-analytics" and day >= date(2026, 11, 10):
        return "globex"
    return "unassigned"


@dataclass(frozen=True)
class DemoRun:
    out: Path
    stdout: str


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One ``streamtoll demo`` on embedded defaults, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    argv = ["--log-level", "WARNING", "demo", "--proxy-events", "4000", "--seed", "11", "--out", str(tmp_path / "out")]
    out = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return DemoRun(tmp_path / "out", out.stdout)


def test_demo_bills_a_month_equal_to_the_ground_truth(demo_run: DemoRun) -> None:
    period = default_period(datetime.now(UTC))
    assert "matches ground truth     yes" in demo_run.stdout
    summary = json.loads((demo_run.out / "summary.json").read_text())
    assert summary["period"] == period and summary["matches_ground_truth"]

    traffic = demo_traffic(MeteringSettings(), period, 4000, 11)
    want: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (source, principal, _c, _vc, _t, direction, hour), values in traffic.truth.items():
        acc = want[(_account(principal, date.fromisoformat(hour[:10])), source, direction)]
        for i, v in enumerate(values):
            acc[i] += v
    got = {
        (u["account"], u["source"], u["direction"]): [u["bytes"], u["records"], u["requests"], u["denied_requests"]]
        for u in summary["usage"]
    }
    assert got == {k: v for k, v in want.items() if any(v)}
    assert summary["dlq"] == dict(traffic.dlq)
    assert summary["audit_records_produced"] == len(traffic.records)

    # an invoice, a stored PDF and a statement for every billed account; unassigned is never billed
    invoices = summary["invoices"]
    billed = {i["account"] for i in invoices}
    assert {"acme", "initech"} <= billed and "unassigned" not in billed
    for inv in invoices:
        assert inv["status"] == "finalized" and inv["number"]
        pdf = demo_run.out / "invoices" / f"{inv['number']}.pdf"
        assert pdf.read_bytes()[:5] == b"%PDF-"
        statement = pd.read_csv(demo_run.out / "statements" / f"{inv['account']}-{period}.csv")
        assert len(statement) > 0
    # acme's usage stays under Growth's minimum: the base fee topped up to 100.00, plus 19 % tax
    assert next(i for i in invoices if i["account"] == "acme")["total"] == "119.00"
    dlq = pd.read_csv(demo_run.out / "dlq.csv")
    assert {"not_json", "schema", "counter_implausible"} <= set(dlq["reason"])


def test_demo_gateway_leg_bills_what_the_clients_sent(demo_run: DemoRun) -> None:
    """The end-to-end proof of the gateway: real clients through ``streamtoll gateway``, their
    usage metered by the worker, stored by the sink, on the statement and the current month's
    invoice, each equal to the clients' delivery reports and reads (records) and the record
    batches the broker holds (bytes, read straight from the broker)."""
    assert "gateway leg matches      yes" in demo_run.stdout
    gw = json.loads((demo_run.out / "gateway.json").read_text())
    assert gw["matches"] and gw["period"] == datetime.now(UTC).strftime("%Y-%m")
    # every client saw all its records acknowledged (producers) or read (each topic's reader)
    produced = {c.topic: c.messages for c in CLIENTS if c.direction == "produce"}
    want_clients = {(c.client_id, c.topic, c.direction, produced[c.topic], 0) for c in CLIENTS}
    got_clients = {(r["client_id"], r["topic"], r["direction"], r["records"], r["errors"]) for r in gw["clients"]}
    assert got_clients == want_clients
    # attributed by the sample client rules: acme-* and initech-* client ids, hooli-* to nobody
    rows = {(r["account"], r["direction"]): r for r in gw["rows"]}
    assert set(rows) == {
        ("acme", "produce"),
        ("acme", "consume"),
        ("initech", "produce"),
        ("initech", "consume"),
        ("unassigned", "produce"),
    }
    for (account, _direction), r in rows.items():
        want = [r["sent_bytes"], sum(c.messages for c in CLIENTS if c.account == account and c.direction == "produce")]
        assert want[0] > want[1] > 0
        assert r["metered"] == r["stored"] == want, r
        if account == "unassigned":
            assert r["statement"] is None and r["invoice"] is None
            continue
        assert r["statement"] == want, r
        assert r["invoice"].startswith("draft-")
        # the invoice's lines of bytes and records hold the same quantities, in their units
        units = {"GB": 10**9, "GiB": 2**30, "million": 10**6, None: 1}
        assert "bytes" in r["invoice_lines"], r
        for measure, line in r["invoice_lines"].items():
            raw = want[0] if measure == "bytes" else want[1]
            assert (
                abs(Decimal(line["quantity"]) * units[line["unit"]] - raw)
                < Decimal("0.000000001") * units[line["unit"]]
            )
    assert set(gw["invoices"]) == {"acme", "initech"}
    assert gw["wall_time_s"] < 30
