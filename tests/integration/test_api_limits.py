"""One partner key flooding the API does not stall it for anyone else (issue 14, point 1).

A real ``streamtoll api`` process on a real PostgreSQL; the flood runs in a process of its own
(50 threads, one connection each, looping on the statement PDF and ignoring ``Retry-After``),
so the latencies measured here are the server's, not this process's threads waiting for the GIL.
Partners have the default limits; finance keys a tight one from their setting, to show it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from billing.api import deps as deps_module
from billing.api.app import create_app
from billing.api.problems import MEDIA_TYPE, TYPE_BASE
from billing.services.billing_run import run_billing
from billing.services.keys import create_key
from billing.settings import DEFAULT_LIMITS, BillingSettings, Limit
from streamtoll.serving import running

from .harness import api_server
from .seed import DEC1

# serial: make test runs this file alone (its kills and timings see no parallel neighbour)
pytestmark = [pytest.mark.integration, pytest.mark.serial]

# 50 threads, each on its own keep-alive connection, asking for the PDF as fast as answers come
FLOOD = r"""
import hashlib, json, sys, threading, time
import httpx

base, key, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
out = []
end = 0.0

def start_clock():
    # the flood lasts `seconds` from when every client is connected and ready (a loaded machine
    # may take seconds to start 50 clients: a clock started before would leave no flood at all)
    global end
    end = time.monotonic() + seconds

ready = threading.Barrier(threads + 1, action=start_clock)

def loop():
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        ready.wait()
        while time.monotonic() < end:
            r = client.get("/v1/statements/2026-11.pdf")
            digest = hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else None
            problem = r.json().get("type") if r.headers.get("content-type") == "application/problem+json" else None
            out.append((r.status_code, r.headers.get("retry-after"), digest, problem))

workers = [threading.Thread(target=loop) for _ in range(threads)]
for t in workers:
    t.start()
ready.wait()
print("flooding", flush=True)
for t in workers:
    t.join()
print(json.dumps(out), flush=True)
"""


@dataclass
class Server:
    base: str
    keys: dict[str, str]


@pytest.fixture
def server(engine: sa.Engine, migrated: str, tmp_path: Path) -> Iterator[Server]:
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    keys = {
        "acme": create_key(engine, "partner", "acme"),
        "globex": create_key(engine, "partner", "globex"),
        "finance": create_key(engine, "finance", None),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    # partners keep the default limits (the flood meets them); finance gets a tight one
    env |= {"STREAMTOLL_DATABASE_URL": migrated, "STREAMTOLL_API_LIMITS_FINANCE": "rate=1/h,burst=2"}
    with api_server(env, tmp_path / "api.log", ready="/healthz/live") as base:
        yield Server(base, keys)


def _metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(base + "/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class Timer(threading.Thread):
    """GETs ``path`` with ``key`` over one connection until stopped; keeps each latency."""

    def __init__(self, base: str, path: str, key: str | None = None, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=base, headers=headers, timeout=60)
        self.path, self.pause = path, pause
        self.latencies: list[float] = []
        self.statuses: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        with self.client:
            while not self.stop.is_set():
                started = time.perf_counter()
                r = self.client.get(self.path)
                self.latencies.append(time.perf_counter() - started)
                self.statuses.add(r.status_code)
                self.stop.wait(self.pause)


def _p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(len(xs) * 0.99) - 1)]


def test_one_key_flooding_statement_pdfs_stalls_no_one_else_and_limits_follow_the_settings(server: Server) -> None:
    base, keys = server.base, server.keys
    # the other partner's normal latency, on this machine, now, asking as it will during the flood
    normal = Timer(base, "/v1/invoices", keys["globex"], pause=0.02)
    normal.start()
    time.sleep(1.0)
    normal.stop.set()
    normal.join()
    assert normal.statuses == {200}
    normal_median = statistics.median(normal.latencies[5:])  # the first ones warm the server up

    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, base, keys["acme"], "50", "4"], stdout=subprocess.PIPE, text=True
    )
    assert flood.stdout is not None
    assert flood.stdout.readline().strip() == "flooding"
    prober = Timer(base, "/healthz/live", pause=0.02)
    other = Timer(base, "/v1/invoices", keys["globex"], pause=0.02)
    prober.start()
    other.start()
    out, _ = flood.communicate(timeout=60)
    prober.stop.set()
    other.stop.set()
    prober.join()
    other.join()
    answers = json.loads(out)

    statuses = [a[0] for a in answers]
    served = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    summary = (
        f"flood: {len(answers)} answers, {len(served)} PDFs, {len(refused)} refused; prober p99 "
        f"{_p99(prober.latencies) * 1000:.0f} ms (max {max(prober.latencies) * 1000:.0f} ms, {len(prober.latencies)}); "
        f"other partner median {statistics.median(other.latencies) * 1000:.1f} ms vs normal "
        f"{normal_median * 1000:.1f} ms ({len(other.latencies)})"
    )
    print(summary)
    assert set(statuses) == {200, 429}, summary
    # the refused were told when to come back, as problems of the documented type
    assert all(a[3] == TYPE_BASE + "too-many-requests" and a[1] and int(a[1]) >= 1 for a in refused), summary
    # every PDF it got is the same document, rendered once
    assert len({a[2] for a in served}) == 1, summary
    assert _metric(base, "streamtoll_statement_pdfs_total", how="rendered") == 1
    assert _metric(base, "streamtoll_statement_pdfs_total", how="stored") == len(served) - 1
    assert _metric(base, "streamtoll_api_limited_total", role="partner") == len(refused)
    # nobody else noticed
    assert prober.statuses == {200} and other.statuses == {200}, summary
    assert _p99(prober.latencies) < 1.0, summary
    assert statistics.median(other.latencies) < 3 * normal_median, summary

    # once the flood stops, the key is served again (a token comes every 0.2 s): the same bytes
    again = httpx.get(base + "/v1/statements/2026-11.pdf", headers={"Authorization": f"Bearer {keys['acme']}"})
    assert again.status_code == 200 and hashlib.sha256(again.content).hexdigest() == served[0][2]
    assert _metric(base, "streamtoll_statement_pdfs_total", how="rendered") == 1

    # the limits come from the role's setting: the fixture's STREAMTOLL_API_LIMITS_FINANCE=
    # rate=1/h,burst=2 allows two statements, then a 429 with a Retry-After of about an hour
    finance = {"Authorization": f"Bearer {keys['finance']}"}
    for _ in range(2):
        r = httpx.get(base + "/v1/statements/2026-11", params={"account": "acme"}, headers=finance)
        assert r.status_code == 200, r.text
    r = httpx.get(base + "/v1/usage", params={"from": "2026-11-01", "to": "2026-12-01"}, headers=finance)
    assert r.status_code == 429 and r.headers["content-type"] == MEDIA_TYPE
    assert r.json()["type"] == TYPE_BASE + "too-many-requests"
    assert 3000 < int(r.headers["retry-after"]) <= 3600
    assert httpx.get(base + "/v1/invoices", headers=finance).status_code == 200  # not an expensive one


# --- in one process: what the slots and the liveness probe do around a worker thread ---------


def test_liveness_answers_while_every_worker_thread_is_busy(engine: sa.Engine) -> None:
    app = create_app(engine)
    release = threading.Event()

    def busy() -> None:
        release.wait(30)

    app.add_api_route("/v1/test/busy", busy)
    with running(app) as base:
        workers = ThreadPoolExecutor(50)
        try:
            held = [workers.submit(httpx.get, base + "/v1/test/busy", timeout=60) for _ in range(50)]
            time.sleep(0.5)  # more requests than the server's 40 worker threads are now waiting
            started = time.perf_counter()
            assert httpx.get(base + "/healthz/live", timeout=5).json() == {"live": True}
            assert time.perf_counter() - started < 1.0
            assert not any(f.done() for f in held)  # they were still holding the threads
        finally:
            release.set()
            workers.shutdown()
        assert all(f.result().status_code == 200 for f in held)


def test_a_slot_is_released_whatever_the_request_ends_with(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """One request at a time for partners: answers, problems, a bug and a 422 all free the slot;
    a second request while one runs waits for it (up to a second), then gets a 429 — without
    having been authenticated (no worker thread, no database query)."""
    authenticated: list[str] = []
    real_authenticate = deps_module.authenticate

    def counting(engine: sa.Engine, presented: str) -> Any:
        authenticated.append(presented)
        return real_authenticate(engine, presented)

    monkeypatch.setattr(deps_module, "authenticate", counting)
    limits = {**DEFAULT_LIMITS, "partner": Limit(rate=1000.0, burst=1000, concurrent=1)}
    app = create_app(engine, BillingSettings(api_limits=limits))
    store = app.state.statements
    key = {"Authorization": f"Bearer {create_key(engine, 'partner', 'acme')}"}
    with running(app) as base:

        def get(path: str, **params: str) -> httpx.Response:
            return httpx.get(base + path, params=params, headers=key, timeout=60)

        for _ in range(3):
            assert get("/v1/statements/2026-11").status_code == 200
            assert get("/v1/statements/not-a-period").status_code == 422
            assert get("/v1/statements/2026-11", account="globex").status_code == 404
            assert get("/v1/usage", **{"from": "2026-11-01"}).status_code == 422  # before the endpoint runs

        real, gate, entered = store.get, threading.Event(), threading.Event()

        def broken(account: str, period: str) -> bytes:
            raise RuntimeError("a bug")

        def slow(account: str, period: str) -> bytes:
            entered.set()
            gate.wait(30)
            return real(account, period)

        store.get = broken
        for _ in range(3):
            assert get("/v1/statements/2026-11").status_code == 500
        store.get = slow
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(get, "/v1/statements/2026-11")
            assert entered.wait(30)
            started, before = time.perf_counter(), len(authenticated)
            refused = get("/v1/statements/2026-11")
            waited = time.perf_counter() - started
            assert 0 < len(authenticated) == before  # refused before authentication
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["type"] == TYPE_BASE + "too-many-requests"
            assert 0.9 < waited < 5  # it waited for the slot first
            assert get("/v1/invoices").status_code == 200  # cheap endpoints take no slot
            gate.set()
            assert first.result().status_code == 200
        store.get = real
        # a request that comes while the slot is held but frees within its wait is served
        gate.clear()
        entered.clear()
        store.get = slow
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(get, "/v1/statements/2026-11")
            assert entered.wait(30)
            threading.Timer(0.3, gate.set).start()
            store.get = real
            assert get("/v1/statements/2026-11").status_code == 200
            assert first.result().status_code == 200
