"""The gateway's audit journal with a real gateway process, real clients and a real broker:
``kill -9`` mid-traffic loses no acknowledged produce; events wait on disk while the audit
cluster is down and go out in order when it is back; a full journal refuses traffic (default) or
drops events with a counter."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from metering.decoders.common import Limits
from metering.decoders.proxy import decode
from metering.domain.events import UsageEvent
from streamtoll.embedded import EmbeddedBroker, free_port

from . import test_gateway as gwt
from .conftest import isolated_env
from .kafka_wire import broker_batches

pytestmark = pytest.mark.integration

PARTITIONS = gwt.PARTITIONS
PRODUCE = gwt.PRODUCE


def _metrics(gw: gwt.GatewayProcess) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{gw.metrics_port}/metrics").text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamtoll_gateway_")
    }


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _deduped(raw: list[bytes], topic: str) -> tuple[Counter[int], int]:
    """Records per partition of ``topic`` in the audit events, each event counted once by the
    worker's own dedup identity (its decoder's event key); and how many copies were dropped."""
    limits = Limits(int(time.time() * 1000), 86_400_000, 300_000, 2**40)
    seen: set[bytes] = set()
    out: Counter[int] = Counter()
    copies = 0
    for value in raw:
        e = json.loads(value)
        if e["data"]["topic"] != topic:
            continue
        ev = decode(value, limits)
        assert isinstance(ev, UsageEvent), value
        if ev.event_key in seen:
            copies += 1
            continue
        seen.add(ev.event_key)
        out[e["data"]["partition"]] += e["data"]["records"]
    return out, copies


def test_kill_9_mid_traffic_every_acknowledged_produce_is_metered_once(broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = isolated_env(broker.bootstrap)
    gw = gwt.GatewayProcess(env, tmp_path / "gateway.log").start()
    topic = gwt._topic(broker, "kill9")
    acked: Counter[int] = Counter()
    failed: list[str] = []
    stop = threading.Event()

    def report(err: KafkaError | None, msg: Any) -> None:
        if err is None:
            acked[msg.partition()] += 1
        else:
            failed.append(str(err))

    def traffic() -> None:
        p = Producer(
            {
                "bootstrap.servers": gw.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "client.id": "killed",
                "reconnect.backoff.ms": 20,
                "reconnect.backoff.max.ms": 200,
                "message.timeout.ms": 30000,
            }
        )
        while not stop.is_set():
            with contextlib.suppress(BufferError):
                p.produce(topic, os.urandom(60), on_delivery=report)
            p.poll(0.0005)
        assert p.flush(30) == 0

    t = threading.Thread(target=traffic)
    t.start()
    try:
        _wait(lambda: sum(acked.values()) > 2000, 20, "no traffic through the gateway")
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGKILL)  # mid-traffic: requests in flight, events not yet delivered
        gw.proc.wait()
        at_kill = sum(acked.values())
        gw.start()  # same ports, same journal: what it holds unconfirmed is sent again
        _wait(lambda: sum(acked.values()) > at_kill + 2000, 20, "no traffic after the restart")
    finally:
        stop.set()
        t.join()
    assert gw.stop() == 0, gw.log()
    assert not failed, failed[:3]

    log = gwt.AuditLog(broker.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    log.wait(lambda: sum(_deduped(log.raw, topic)[0].values()) >= sum(acked.values()), timeout=15)
    log.consumer.close()
    metered, copies = _deduped(log.raw, topic)
    stored = broker_batches(broker.bootstrap, topic, PARTITIONS)
    print(
        f"kill -9 bound: {sum(acked.values())} records acknowledged ({at_kill} before the kill), "
        f"{sum(metered.values())} metered after dedup, {copies} copies dropped by dedup, "
        f"{stored[0]} stored by the broker"
    )
    assert metered == acked  # every acknowledged record metered, none twice
    assert "the audit journal holds events not confirmed delivered" in gw.log() or copies == 0


def _down_audit_env(broker: EmbeddedBroker, audit_port: int, **extra: str) -> dict[str, str]:
    env = isolated_env(broker.bootstrap)
    env["STREAMTOLL_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{audit_port}"  # the audit cluster: nobody there (yet)
    env["STREAMTOLL_GATEWAY_UPSTREAM_BOOTSTRAP"] = broker.bootstrap
    env.update({f"STREAMTOLL_{k}": v for k, v in extra.items()})
    return env


def test_events_wait_in_the_journal_while_the_audit_cluster_is_down_then_go_in_order(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    audit_port = free_port()
    env = _down_audit_env(broker, audit_port)
    gw = gwt.GatewayProcess(env, tmp_path / "gateway.log").start()
    topic = gwt._topic(broker, "down")
    p = Producer({"bootstrap.servers": gw.bootstrap, "linger.ms": 0, "client.id": "ordered"})
    for n in range(1, 21):  # request n carries a record of 10·n bytes: the order is visible in the events
        p.produce(topic, b"v" * 10 * n, partition=0)
        assert p.flush(10) == 0  # traffic flows while the audit topic is unavailable
    m = _metrics(gw)
    assert m["streamtoll_gateway_audit_pending"] >= 20
    assert m['streamtoll_gateway_audit_events_total{outcome="delivered"}'] == 0
    assert m["streamtoll_gateway_audit_journal_bytes"] > 0
    _wait(lambda: _metrics(gw)["streamtoll_gateway_audit_journal_age_seconds"] > 0.1, 5, "no journal age")
    health = httpx.get(f"http://127.0.0.1:{gw.metrics_port}/healthz")
    assert health.status_code == 200 and health.json()["journal"]["events"] >= 20

    audit = EmbeddedBroker(port=audit_port, log_path=tmp_path / "audit-broker.log").start()
    try:
        log = gwt.AuditLog(audit.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
        log.wait(lambda: len(log.for_topic(topic)) >= 20, timeout=20)
        log.consumer.close()
        sizes = [e["data"]["bytes"] for e in log.for_topic(topic)]
        assert len(sizes) == 20 and sizes == sorted(sizes) and len(set(sizes)) == 20
        _wait(lambda: _metrics(gw)["streamtoll_gateway_audit_pending"] == 0, 5, "the journal did not empty")
        assert _metrics(gw)["streamtoll_gateway_audit_journal_age_seconds"] == 0
        assert gw.stop() == 0, gw.log()
        assert '"not_written": 0' in gw.log()
    finally:
        gw.stop()
        audit.stop()


def _fill(gw: gwt.GatewayProcess, topic: str) -> int:
    """Produce through the gateway until its journal is full; returns the records acknowledged."""
    p = Producer({"bootstrap.servers": gw.bootstrap, "linger.ms": 1, "message.timeout.ms": 5000})
    acked = 0
    while not _metrics(gw)["streamtoll_gateway_audit_journal_full"]:
        for i in range(200):
            p.produce(topic, os.urandom(20), partition=i % PARTITIONS)
        assert p.flush(10) == 0
        acked += 200
    return acked


def test_a_full_journal_refuses_produce_and_fetch_by_default(broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = _down_audit_env(broker, free_port(), GATEWAY_JOURNAL_MAX_BYTES="65536")
    gw = gwt.GatewayProcess(env, tmp_path / "gateway.log").start()
    try:
        topic = gwt._topic(broker, "refuse")
        _fill(gw, topic)
        stored = broker_batches(broker.bootstrap, topic, PARTITIONS)
        errors: list[KafkaError] = []
        p = Producer({"bootstrap.servers": gw.bootstrap, "linger.ms": 0, "message.timeout.ms": 1500})
        p.produce(topic, b"refused", partition=0, on_delivery=lambda e, m: errors.append(e))
        p.flush(10)
        assert [e.code() for e in errors if e is not None] != [] and len(errors) == 1  # not acknowledged
        c = Consumer({"bootstrap.servers": gw.bootstrap, "group.id": "refused", "fetch.wait.max.ms": 50})
        c.assign([TopicPartition(topic, 0, 0)])
        got = [m for m in c.consume(100, 1.2) if not m.error()]
        c.close()
        assert got == []  # fetches answered empty (throttled) while the journal is full
        m = _metrics(gw)
        assert m['streamtoll_gateway_refused_requests_total{api="produce"}'] > 0
        assert m['streamtoll_gateway_refused_requests_total{api="fetch"}'] > 0
        assert m['streamtoll_gateway_audit_events_total{outcome="dropped"}'] == 0
        health = httpx.get(f"http://127.0.0.1:{gw.metrics_port}/healthz")
        assert health.status_code == 503 and health.json()["journal"]["full"] is True
        assert broker_batches(broker.bootstrap, topic, PARTITIONS) == stored  # the refused one never reached it
        assert "Produce and Fetch are refused" in gw.log()
    finally:
        gw.stop()


def test_a_full_journal_drops_with_a_counter_when_told_to(broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = _down_audit_env(broker, free_port(), GATEWAY_JOURNAL_MAX_BYTES="65536", GATEWAY_JOURNAL_FULL="drop")
    gw = gwt.GatewayProcess(env, tmp_path / "gateway.log").start()
    try:
        topic = gwt._topic(broker, "drop")
        _fill(gw, topic)
        p = Producer({"bootstrap.servers": gw.bootstrap, "linger.ms": 0})
        for i in range(8):
            p.produce(topic, b"flows", partition=i % PARTITIONS)
            assert p.flush(10) == 0  # traffic flows, unmetered
        m = _metrics(gw)
        assert m['streamtoll_gateway_audit_events_total{outcome="dropped"}'] >= 8
        assert m['streamtoll_gateway_refused_requests_total{api="produce"}'] == 0
        assert httpx.get(f"http://127.0.0.1:{gw.metrics_port}/healthz").status_code == 200
        assert "audit events dropped, their usage is NOT metered" in gw.log()
    finally:
        gw.stop()
