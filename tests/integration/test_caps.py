"""``streamtoll caps`` on the real broker: usage minute partials in, enforcement decisions out.

The minute records are produced as the metering worker publishes them (the worker's own tests
prove those); the caps service runs as a real child process. The time from the partial that
crosses a cap being on the topic to the decision being on the enforcement topic is measured and
printed (`-s`); only a generous bound is asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from metering.entitlements import Cap, Entitlement, decision_key, encode_entitlement
from streamtoll.embedded import EmbeddedBroker
from tests.integration.conftest import isolated_env
from tests.integration.harness import Worker

PARTITIONS = 4


@pytest.fixture
def caps_env(broker: EmbeddedBroker) -> dict[str, str]:
    env = isolated_env(broker.bootstrap)
    tag = uuid.uuid4().hex[:8]
    env["STREAMTOLL_TOPIC_ENTITLEMENTS"] = f"t{tag}.entitlements"
    env["STREAMTOLL_TOPIC_ENFORCEMENT"] = f"t{tag}.enforcement"
    env["STREAMTOLL_TOPIC_PARTITIONS"] = str(PARTITIONS)
    if not os.environ.get("STREAMTOLL_TEST_KAFKA_BOOTSTRAP"):  # the embedded tansu
        env["STREAMTOLL_CAPS_EMBEDDED_BROKER"] = "true"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(env["STREAMTOLL_TOPIC_USAGE_MINUTES"], PARTITIONS, 1)]).values():
        f.result(15)
    return env


@pytest.fixture
def caps_service(caps_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "caps.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "caps"],
            env=caps_env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Decisions:
    """Follows the enforcement topic: the newest decision per (account, meter)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"r{uuid.uuid4().hex}", "fetch.wait.max.ms": 20}
        )
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.latest: dict[bytes, dict[str, Any]] = {}
        self.seen: list[dict[str, Any]] = []

    def wait(self, until: Callable[[dict[bytes, dict[str, Any]]], bool], log: Path, timeout: float = 90) -> float:
        deadline = time.monotonic() + timeout
        while not until(self.latest):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            for m in self.consumer.consume(100, 0.05):
                if m.error() is None and m.value() is not None:
                    doc = json.loads(m.value())
                    self.latest[m.key()] = doc
                    self.seen.append(doc)
        return time.monotonic()


def minute(account: str, shard: str, offset: int, b: int, *, client: str = "c1", direction: str = "produce") -> bytes:
    start = int(time.time()) // 60 * 60
    return json.dumps(
        {
            "minute_start": "",
            "minute_epoch_s": start,
            "source": "proxy",
            "principal": f"User:{account}/svc",
            "client_id": client,
            "virtual_cluster": "",
            "topic": "orders",
            "direction": direction,
            "bytes": b,
            "records": 1,
            "requests": 1,
            "denied_requests": 0,
            "shard": shard,
            "offset": offset,
        }
    ).encode()


def send(producer: Producer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(15) == 0


def test_a_crossed_cap_is_decided_on_the_enforcement_topic_within_seconds(
    caps_env: dict[str, str], caps_service: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log = caps_service
    bootstrap = caps_env["STREAMTOLL_KAFKA_BOOTSTRAP"]
    minutes_topic = caps_env["STREAMTOLL_TOPIC_USAGE_MINUTES"]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    accounts = ["acme", "beta", "gamma"]
    send(
        producer,
        caps_env["STREAMTOLL_TOPIC_ENTITLEMENTS"],
        [
            (
                a.encode(),
                encode_entitlement(
                    Entitlement(
                        a,
                        caps=(
                            Cap("produce_bytes", 10_000, "block"),
                            Cap("consume_bytes", 5_000, "throttle", floor_bytes_per_second=100),
                        ),
                    )
                ),
            )
            for a in accounts
        ],
    )
    decisions = Decisions(bootstrap, caps_env["STREAMTOLL_TOPIC_ENFORCEMENT"])
    started = time.monotonic()
    # under the caps: the first usage of each account is decided ok (and shows the service runs)
    first = [(f'["{a}"]'.encode(), minute(a, "proxy-audit/0", 10 + i, 6_000, client=a)) for i, a in enumerate(accounts)]
    send(producer, minutes_topic, first + first)  # each partial twice: counted once
    send(
        producer,
        minutes_topic,
        [(b"x", minute("other", "proxy-audit/1", 5, 50_000).replace(b"User:other/svc", b"User:legacy"))],
    )
    decisions.wait(lambda lt: all(decision_key(a, "produce_bytes") in lt for a in accounts), log)
    print(f"\ncaps service ready (first decisions) after {time.monotonic() - started:.1f} s")
    for a in accounts:
        d = decisions.latest[decision_key(a, "produce_bytes")]
        assert (d["state"], d["used"], d["included"]) == ("ok", 6_000, 10_000)

    latencies = []
    for i, a in enumerate(accounts):
        crossing = minute(a, "proxy-audit/2", 100 + i, 5_000, client=a)
        send(producer, minutes_topic, [(f'["{a}",2]'.encode(), crossing)])
        t0 = time.monotonic()
        key = decision_key(a, "produce_bytes")
        t1 = decisions.wait(lambda lt, key=key: lt[key]["state"] != "ok", log)  # type: ignore[misc]
        latencies.append(t1 - t0)
        d = decisions.latest[key]
        assert (d["state"], d["used"], d["included"], d["month"]) == ("block", 11_000, 10_000, d["since"][:7])
        assert (
            d["reason"] == f"monthly cap reached: produce_bytes 11000 of 10000 included in {d['month']} (policy block)"
        )
    # the same crossing partial again changes nothing; the other meter and the other accounts stay ok
    send(producer, minutes_topic, [(b'["acme",2]', minute("acme", "proxy-audit/2", 100, 5_000, client="acme"))])
    consume = minute("beta", "proxy-audit/3", 7, 5_000, client="beta", direction="consume")
    send(producer, minutes_topic, [(b'["beta",3]', consume)])
    decisions.wait(lambda lt: lt.get(decision_key("beta", "consume_bytes"), {}).get("state") == "throttle", log)
    beta = decisions.latest[decision_key("beta", "consume_bytes")]
    assert (beta["used"], beta["floor_bytes_per_second"]) == (5_000, 100)
    assert decisions.latest[decision_key("acme", "consume_bytes")]["state"] == "ok"
    assert not [d for d in decisions.seen if d["account"] not in accounts]
    assert [d["used"] for d in decisions.seen if d["account"] == "acme" and d["meter"] == "produce_bytes"] == [
        6_000,
        11_000,
    ]
    # a raised cap (a plan change) lifts the block without new usage
    raised = Entitlement("gamma", caps=(Cap("produce_bytes", 20_000, "block"),))
    send(producer, caps_env["STREAMTOLL_TOPIC_ENTITLEMENTS"], [(b"gamma", encode_entitlement(raised))])
    decisions.wait(lambda lt: lt[decision_key("gamma", "produce_bytes")]["state"] == "ok", log)
    gamma = decisions.latest[decision_key("gamma", "produce_bytes")]
    assert (gamma["used"], gamma["included"]) == (11_000, 20_000)
    assert decisions.latest[decision_key("gamma", "consume_bytes")]["included"] == 0  # its cap was removed
    print("cap crossed → decision on the topic: " + ", ".join(f"{x:.2f} s" for x in latencies))
    assert max(latencies) < 30
    assert proc.poll() is None


# serial: once (a clean-clone CI run of 2026-12-07, the parallel pass) the restarted caps process
# logged "Worker ready" after a recovery like every passing run's and then consumed nothing for
# 90 s; 12 runs since, alone and two at a time, passed. Alone it sees no neighbour's load while
# that is looked into (the stop's note).
@pytest.mark.serial
def test_month_to_date_survives_a_restart_and_redelivered_partials_count_once(
    caps_env: dict[str, str], tmp_path: Path
) -> None:
    bootstrap = caps_env["STREAMTOLL_KAFKA_BOOTSTRAP"]
    minutes_topic = caps_env["STREAMTOLL_TOPIC_USAGE_MINUTES"]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    send(
        producer,
        caps_env["STREAMTOLL_TOPIC_ENTITLEMENTS"],
        [(b"acme", encode_entitlement(Entitlement("acme", caps=(Cap("produce_bytes", 10_000, "soft"),))))],
    )
    decisions = Decisions(bootstrap, caps_env["STREAMTOLL_TOPIC_ENFORCEMENT"])
    key = decision_key("acme", "produce_bytes")
    batch = [(f'["c{i}"]'.encode(), minute("acme", "proxy-audit/0", 10, 1_000, client=f"c{i}")) for i in range(6)]

    def run(log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "streamtoll.cli", "caps", "--refresh", "0"],
                env=caps_env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    log = tmp_path / "caps.log"
    proc = run(log)
    try:
        send(producer, minutes_topic, batch)
        decisions.wait(lambda lt: lt.get(key, {}).get("used") == 6_000, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    proc = run(log)
    try:
        send(producer, minutes_topic, [(b'["c9"]', minute("acme", "proxy-audit/0", 11, 5_000, client="c9"))])
        decisions.wait(lambda lt: lt[key]["used"] != 6_000, log)
        d = decisions.latest[key]
        assert (d["state"], d["used"]) == ("soft", 11_000), log.read_text()[-3000:]
        # the first batch once more (as a route that had not committed its offsets sends it), then more
        send(producer, minutes_topic, [*batch, (b'["c9"]', minute("acme", "proxy-audit/0", 12, 1, client="c9"))])
        decisions.wait(lambda lt: lt[key]["used"] != 11_000, log)
        assert decisions.latest[key]["used"] == 11_001
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.soak
def test_two_caps_workers_hand_accounts_over_without_counting_a_partial_twice(
    caps_env: dict[str, str], tmp_path: Path
) -> None:
    """Partials (each sent twice) flow while a second caps worker joins and the first leaves:
    every account's month-to-date ends exactly at what was sent once."""
    import threading

    bootstrap = caps_env["STREAMTOLL_KAFKA_BOOTSTRAP"]
    minutes_topic = caps_env["STREAMTOLL_TOPIC_USAGE_MINUTES"]
    accounts = [f"acct{i}" for i in range(8)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    send(
        producer,
        caps_env["STREAMTOLL_TOPIC_ENTITLEMENTS"],
        [
            (a.encode(), encode_entitlement(Entitlement(a, caps=(Cap("produce_bytes", 10**15, "soft"),))))
            for a in accounts
        ],
    )
    expected = dict.fromkeys(accounts, 0)
    stop = threading.Event()

    def feed() -> None:
        offset = 0
        while not stop.is_set():
            offset += 1
            for shard in ("proxy-audit/0", "proxy-audit/1"):
                batch = []
                for k in range(12):
                    a = accounts[(offset + k) % len(accounts)]
                    expected[a] += k + 1
                    batch.append((f"{a}-{k}".encode(), minute(a, shard, offset, k + 1, client=f"c{k}")))
                send(producer, minutes_topic, batch + batch)
            time.sleep(0.05)

    def run(name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "streamtoll.cli", "caps", "--refresh", "0"],
                env=caps_env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    decisions = Decisions(bootstrap, caps_env["STREAMTOLL_TOPIC_ENFORCEMENT"])
    first = run("first")
    feeder = threading.Thread(target=feed)
    feeder.start()
    second = None
    try:
        decisions.wait(lambda lt: len(lt) == len(accounts), tmp_path / "first.log")
        second = run("second")
        time.sleep(15)  # the second joins: a rebalance
        first.send_signal(signal.SIGTERM)
        first.wait(60)
        time.sleep(10)  # the first leaves: another
    finally:
        stop.set()
        feeder.join()
        try:
            key = {a: decision_key(a, "produce_bytes") for a in accounts}
            decisions.wait(
                lambda lt: all(lt.get(key[a], {}).get("used") == n for a, n in expected.items()),
                tmp_path / "second.log",
                timeout=120,
            )
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)


def audit_event(account: str, nbytes: int) -> tuple[bytes, bytes]:
    """A proxy audit event as the gateway writes it for an issued credential's produce."""
    principal = f"User:{account}/svc"
    doc = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "//proxy/gw-0",
        "type": "io.streamtoll.kafka.produce",
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": principal,
        "data": {
            "client_id": "c1",
            "virtual_cluster": "",
            "topic": "orders",
            "partition": 0,
            "records": 1,
            "bytes": nbytes,
        },
    }
    return principal.encode(), json.dumps(doc).encode()


def test_from_audit_event_to_decision_through_a_real_worker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The whole path a gateway's traffic takes: proxy audit event → ``streamtoll worker`` →
    usage minute → ``streamtoll caps`` → decision; the time from the event that crosses the cap
    being on the audit topic to the decision is printed."""
    env = isolated_env(broker.bootstrap)
    tag = uuid.uuid4().hex[:8]
    env["STREAMTOLL_TOPIC_ENTITLEMENTS"] = f"t{tag}.entitlements"
    env["STREAMTOLL_TOPIC_ENFORCEMENT"] = f"t{tag}.enforcement"
    if not os.environ.get("STREAMTOLL_TEST_KAFKA_BOOTSTRAP"):
        env["STREAMTOLL_CAPS_EMBEDDED_BROKER"] = "true"
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    capped = Entitlement("acme", caps=(Cap("produce_bytes", 10_000, "block"),))
    send(producer, env["STREAMTOLL_TOPIC_ENTITLEMENTS"], [(b"acme", encode_entitlement(capped))])
    worker = Worker(env, tmp_path / "worker.log").start()
    caps = None
    try:
        decisions = Decisions(broker.bootstrap, env["STREAMTOLL_TOPIC_ENFORCEMENT"])
        send(producer, env["STREAMTOLL_TOPIC_PROXY_AUDIT"], [audit_event("acme", 6_000)])
        with open(tmp_path / "caps.log", "wb") as out:
            caps = subprocess.Popen(
                [sys.executable, "-m", "streamtoll.cli", "caps"],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        key = decision_key("acme", "produce_bytes")
        decisions.wait(lambda lt: key in lt, tmp_path / "caps.log")
        assert decisions.latest[key]["used"] == 6_000 and decisions.latest[key]["state"] == "ok"
        send(producer, env["STREAMTOLL_TOPIC_PROXY_AUDIT"], [audit_event("acme", 5_000)])
        t0 = time.monotonic()
        t1 = decisions.wait(lambda lt: lt[key]["state"] == "block", tmp_path / "caps.log")
        print(f"\naudit event crossing the cap → decision on the enforcement topic: {t1 - t0:.2f} s")
        assert decisions.latest[key]["used"] == 11_000
        assert t1 - t0 < 30
    finally:
        if caps is not None:
            caps.send_signal(signal.SIGTERM)
            caps.wait(30)
        worker.stop()
