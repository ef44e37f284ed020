"""`streamtoll demo` on embedded defaults: exits 0, its totals match the generator's truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def test_demo_meters_exactly_and_writes_its_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamtoll.cli",
            "--log-level",
            "WARNING",
            "demo",
            "--proxy-events",
            "4000",
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "matches ground truth   yes" in out.stdout
    usage = pd.read_csv(tmp_path / "out" / "usage-windows.csv")
    assert set(usage["source"]) == {"proxy", "broker_metrics", "audit_log"}
    dlq = pd.read_csv(tmp_path / "out" / "dlq.csv")
    assert {"not_json", "schema", "counter_implausible"} <= set(dlq["reason"])
    invoices = json.loads((tmp_path / "out" / "invoices.json").read_text())
    assert [i["account"] for i in invoices] == ["acme", "globex", "initech"]
    assert all(i["number"] for i in invoices)
    # acme's traffic is small: Growth's base fee plus the top-up to its 100.00 minimum, 19 % tax
    assert invoices[0]["total"] == "119.00"
