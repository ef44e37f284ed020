"""Test helpers: ``streamtoll worker`` as a real child process (traffic lives in streamtoll.dev.traffic)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from streamtoll.dev.traffic import Traffic, committed, produce, read_all, wait_caught_up, window_totals

__all__ = ["Traffic", "Worker", "api_server", "committed", "produce", "read_all", "wait_caught_up", "window_totals"]


class Worker:
    """``streamtoll worker`` as a real child process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        return self

    def kill9(self, *, for_good: bool = False) -> None:
        """``kill -9``. ``for_good``: the worker will not come back, so on the dev broker its open
        transaction is aborted here, as Apache Kafka's transaction coordinator does by itself after
        ``transaction.timeout.ms`` (30 s): tansu never does, and the dead worker's pending
        TxnOffsetCommit then hides its partitions' committed offsets from the whole group for good:
        every later commit of them reads as none (measured on tansu, 2026-12-07; the cause of the
        two-worker handover test's failures). A restarted worker aborts it itself (same
        ``transactional.id``)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if for_good and not os.environ.get("STREAMTOLL_TEST_KAFKA_BOOTSTRAP"):
            abort_transaction_of(self.env)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode


def abort_transaction_of(env: dict[str, str]) -> None:
    """Fence the worker's ``transactional.id`` (``<METERING_GROUP>-<INSTANCE_ID>``, as
    ``metering.engine.loop`` sets it): ``init_transactions`` aborts what it left open."""
    from confluent_kafka import Producer

    transactional_id = f"{env['STREAMTOLL_METERING_GROUP']}-{env['STREAMTOLL_INSTANCE_ID']}"
    fence = Producer({"bootstrap.servers": env["STREAMTOLL_KAFKA_BOOTSTRAP"], "transactional.id": transactional_id})
    fence.init_transactions(30)
    fence.flush(5)


@contextlib.contextmanager
def api_server(env: dict[str, str], log: Path, *options: str, ready: str = "/healthz") -> Iterator[str]:
    """``streamtoll [options] api`` as a real child process on a free port: its base URL once
    ``ready`` answers 200 (within 60 s), stopped with SIGTERM afterwards."""
    from streamtoll.embedded import free_port

    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", *options, "api", "--bind", f"127.0.0.1:{port}"],
            env=env,
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
