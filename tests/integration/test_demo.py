"""`streamtoll demo` on embedded defaults: exits 0, and what it bills equals the ground truth
of the traffic it generated, recomputed here from the same seed and attributed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from metering.settings import MeteringSettings
from streamtoll.demo import default_period, demo_traffic

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


def test_demo_bills_a_month_equal_to_the_ground_truth(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    period = default_period(datetime.now(UTC))
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
    assert "matches ground truth     yes" in out.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
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
        pdf = tmp_path / "out" / "invoices" / f"{inv['number']}.pdf"
        assert pdf.read_bytes()[:5] == b"%PDF-"
        statement = pd.read_csv(tmp_path / "out" / "statements" / f"{inv['account']}-{period}.csv")
        assert len(statement) > 0
    # acme's usage stays under Growth's minimum: the base fee topped up to 100.00, plus 19 % tax
    assert next(i for i in invoices if i["account"] == "acme")["total"] == "119.00"
    dlq = pd.read_csv(tmp_path / "out" / "dlq.csv")
    assert {"not_json", "schema", "counter_implausible"} <= set(dlq["reason"])
