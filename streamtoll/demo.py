"""``streamtoll demo``: the main job end to end on embedded defaults.

Today (metering): start the embedded broker, generate realistic audit traffic (proxy audit with
retries, late, bad and ignored records and tombstones; broker metrics with counter resets and
retried exports; audit log with denied requests), meter it with the real worker loop, read the
published usage windows back, check them against the generator's own ground truth, and write
``out/usage-windows.csv`` and ``out/dlq.csv``. Billing joins the demo when billing lands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from metering.engine import Engine
from metering.engine.loop import ensure_topics
from metering.settings import MeteringSettings
from streamtoll.traffic import Traffic, produce, read_all, wait_caught_up, window_totals

__all__ = ["run_demo"]

log = logging.getLogger("streamtoll.demo")


def run_demo(settings: MeteringSettings, out_dir: Path, proxy_events: int) -> bool:
    """Run the demo; True when the metered totals equal the generator's ground truth."""
    assert settings.kafka_bootstrap
    bootstrap = settings.kafka_bootstrap
    started = time.monotonic()
    ensure_topics(settings)
    traffic = Traffic.make(
        time.time(),
        (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit),
        n_proxy=proxy_events,
    )
    engine = Engine(settings)
    thread = threading.Thread(target=engine.run, name="metering", daemon=True)
    thread.start()
    print(f"producing {len(traffic.records):,} audit records …", flush=True)
    ends = produce(bootstrap, traffic.records)
    print("metering …", flush=True)
    wait_caught_up(bootstrap, settings.group_id, ends, timeout=600, alive=thread.is_alive)
    engine.stop()
    thread.join(60)

    rows = read_all(bootstrap, settings.topic_usage_windows, 4)
    got = window_totals(rows)
    want = {k: v for k, v in traffic.truth.items() if any(v)}
    exact = {k: v for k, v in got.items() if any(v)} == want
    dlq = read_all(bootstrap, settings.topic_dlq, 4)

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["source", "principal", "client_id", "virtual_cluster", "topic", "direction", "window_start"]
    frame = pd.DataFrame(
        [(*k, *v) for k, v in sorted(got.items())], columns=[*cols, "bytes", "records", "requests", "denied_requests"]
    )
    frame.to_csv(out_dir / "usage-windows.csv", index=False)
    pd.DataFrame(
        [(d["reason"], *(d["source"][f] for f in ("topic", "partition", "offset")), d["detail"]) for d in dlq],
        columns=["reason", "topic", "partition", "offset", "detail"],
    ).to_csv(out_dir / "dlq.csv", index=False)

    summary = frame.groupby(["source", "principal"])[["bytes", "records", "requests", "denied_requests"]].sum()
    print()
    print(summary.to_string())
    print()
    print(f"input records          {len(traffic.records):>12,}")
    print(f"usage window snapshots {len(rows):>12,}")
    print(f"DLQ by reason          {dict(sorted(Counter(d['reason'] for d in dlq).items()))}")
    print(f"matches ground truth   {'yes' if exact else 'NO'}")
    print(f"wall time              {time.monotonic() - started:>11.1f} s")
    print(f"written                {out_dir / 'usage-windows.csv'}, {out_dir / 'dlq.csv'}")
    return exact
