"""The embedded parts start for real, answer, stop cleanly, and fail with one clear sentence."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient

from streamtoll.embedded import EmbeddedBroker, EmbeddedError, EmbeddedPostgres

pytestmark = pytest.mark.integration


def test_broker_starts_answers_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "b.log").start()
    pid = broker._proc.pid if broker._proc else -1
    try:
        md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert md.brokers, "the broker answers metadata requests"
    finally:
        broker.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_broker_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EmbeddedError, match=f"Port {port} is already in use"):
            EmbeddedBroker(port=port).start()


def test_postgres_starts_answers_and_stops(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    try:
        assert pg.url and pg.url.startswith("postgresql+psycopg://")
        engine = sa.create_engine(pg.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 40 + 2")).scalar() == 42
        engine.dispose()
    finally:
        pg.stop()
    assert not any(str(tmp_path / "pg") in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_worker_with_bad_settings_says_what_is_wrong_and_exits_2() -> None:
    env = {"STREAMTOLL_DEDUP_HORIZON": "forever", "STREAMTOLL_BATCH_SIZE": "-1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "streamtoll.cli", "worker"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "STREAMTOLL_DEDUP_HORIZON" in out.stderr and "STREAMTOLL_BATCH_SIZE" in out.stderr
    assert "Traceback" not in out.stderr


def test_broker_dies_with_its_parent_even_on_kill_minus_9(tmp_path: Path) -> None:
    script = (
        "import os, sys, time\n"
        "from streamtoll.embedded import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b._proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    proc = psutil.Process(broker_pid)
    try:
        proc.wait(timeout=10)
    except psutil.TimeoutExpired:
        proc.kill()
        raise AssertionError("the embedded broker outlived its parent") from None
