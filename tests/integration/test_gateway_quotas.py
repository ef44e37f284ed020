"""Rate quotas and monthly caps enforced by the gateway (``gateway.quota``): real broker, real
gateway process with ``GATEWAY_AUTH=streamtoll``, credentials issued by the real command line,
confluent-kafka and aiokafka clients. Entitlements and caps decisions are published here straight
to their control topics, as billing and the caps fold publish them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.static.primitive import i16, i32

from gateway import protocol
from gateway.control import ensure_control_topic
from metering.entitlements import (
    Decision,
    Entitlement,
    Limits,
    decision_key,
    encode_decision,
    encode_entitlement,
    month_of,
)
from streamtoll.embedded import EmbeddedBroker

from .conftest import isolated_env
from .kafka_wire import RawClient
from .test_gateway import AuditLog, GatewayProcess
from .test_gateway_credentials import PRODUCE, _sasl, _scram_login, _topic

# serial (registered on main by the two-pass make test): rates measured alone, no neighbour's load
pytestmark = [pytest.mark.integration, pytest.mark.serial]

QUOTA = 1_000_000  # acme's produce and consume bytes per second
VALUE = 1000  # bytes per record


class Setup:
    def __init__(self, broker: EmbeddedBroker, env: dict[str, str], gw: GatewayProcess) -> None:
        self.broker, self.env, self.gw = broker, env, gw
        self.creds: dict[str, dict[str, Any]] = {}
        self.control = Producer({"bootstrap.servers": broker.bootstrap})

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self.control.produce(topic, value, key)
        assert self.control.flush(10) == 0

    def entitle(self, e: Entitlement) -> None:
        self.publish(self.env["STREAMTOLL_TOPIC_ENTITLEMENTS"], e.account.encode(), encode_entitlement(e))

    def decide(self, account: str, meter: str, state: str, **kw: Any) -> Decision:
        now = datetime.now(UTC)
        d = Decision(account, meter, month_of(now), state, 2_000_000, 1_000_000, now, now, **kw)  # type: ignore[arg-type]
        self.publish(self.env["STREAMTOLL_TOPIC_ENFORCEMENT"], decision_key(account, meter), encode_decision(d))
        return d

    def config(self, account: str, **extra: Any) -> dict[str, Any]:
        return {**_sasl(self.gw, "SCRAM-SHA-512", self.creds[account]), **extra}

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.gw.metrics_port}/metrics").text


@pytest.fixture(scope="module")
def quotas(
    broker: EmbeddedBroker, module_catalog: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    """A gateway authenticating acme (produce and consume limited to :data:`QUOTA`), globex,
    initech and hooli (no limits) with their own credentials."""
    from billing.services.catalog import load_accounts
    from billing.services.credentials import create_credential, publish_credentials

    tmp = tmp_path_factory.mktemp("gwquota")
    url, engine = module_catalog
    samples = Path(__file__).parents[2] / "streamtoll" / "samples"
    accounts = tmp / "accounts.yaml"  # the samples and one account more: each test its own rates
    accounts.write_text(
        (samples / "accounts.yaml").read_text()
        + "  - code: hooli\n    name: Hooli\n    email: ap@hooli.example\n    currency: EUR\n"
        + '    tax_rate: "0.00"\n    subscription: {plan: growth, starts_on: 2026-01-01}\n'
        + '    clients:\n      - principal: "User:hooli-*"\n'
    )
    load_accounts(engine, accounts)
    env = isolated_env(broker.bootstrap)
    base = env["STREAMTOLL_TOPIC_PROXY_AUDIT"].replace(".proxy-audit", "")
    env["STREAMTOLL_TOPIC_CREDENTIALS"] = f"{base}.credentials"
    env["STREAMTOLL_TOPIC_ENTITLEMENTS"] = f"{base}.entitlements"
    env["STREAMTOLL_TOPIC_ENFORCEMENT"] = f"{base}.enforcement"
    env["STREAMTOLL_DATABASE_URL"] = url
    for topic in (env["STREAMTOLL_TOPIC_ENTITLEMENTS"], env["STREAMTOLL_TOPIC_ENFORCEMENT"]):
        ensure_control_topic({"bootstrap.servers": broker.bootstrap}, topic)
    gw = GatewayProcess({**env, "STREAMTOLL_GATEWAY_AUTH": "streamtoll"}, tmp / "gateway.log")
    setup = Setup(broker, env, gw)
    # issued in-process (the command line's own path is proven in test_gateway_credentials.py)
    for account in ("acme", "globex", "initech", "hooli"):
        issued = create_credential(engine, account, "quota-svc")
        setup.creds[account] = {"username": issued.username, "password": issued.password}
    publish_credentials(engine, {"bootstrap.servers": broker.bootstrap}, env["STREAMTOLL_TOPIC_CREDENTIALS"])
    setup.entitle(Entitlement("acme", limits=Limits(QUOTA, QUOTA, None)))
    setup.entitle(Entitlement("globex"))
    setup.entitle(Entitlement("initech"))
    setup.entitle(Entitlement("hooli"))
    gw.start()
    try:
        yield setup
    finally:
        gw.stop()


class PacedProducer(threading.Thread):
    """Offers ``rate`` bytes/s of :data:`VALUE`-byte records through the gateway and notes when
    each delivery came back."""

    def __init__(self, setup: Setup, account: str, topic: str, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.throttled_ms = 0  # the largest throttle_time_ms librdkafka saw in a response
        self.producer = Producer(
            setup.config(
                account,
                **{"linger.ms": 5, "client.id": f"{account}-paced", "statistics.interval.ms": 500},
                stats_cb=self._stats,
            )
        )
        self.topic, self.rate, self.seconds = topic, rate, seconds
        self.delivered: list[float] = []
        self.errors: list[KafkaError] = []
        self.started = 0.0

    def _stats(self, doc: str) -> None:
        for b in json.loads(doc)["brokers"].values():
            self.throttled_ms = max(self.throttled_ms, int(b.get("throttle", {}).get("max", 0)))

    def _done(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered.append(time.monotonic())
        elif err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            self.errors.append(err)

    def run(self) -> None:
        value = b"x" * VALUE
        self.started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - self.started < self.seconds:
            due = int((now - self.started) * self.rate / VALUE)
            while sent < due:
                self.producer.produce(self.topic, value, on_delivery=self._done)
                sent += 1
            self.producer.poll(0.005)
        self.producer.purge()  # the backlog a throttled producer holds is not what is measured
        self.producer.flush(5)
        del self.producer  # no reconnecting to a gateway the module fixture has stopped

    def rate_between(self, start: float, end: float) -> float:
        """Delivered bytes per second between ``start`` and ``end`` seconds after it started."""
        n = sum(1 for t in self.delivered if start <= t - self.started < end)
        return n * VALUE / (end - start)


def test_a_producer_at_three_times_its_quota_is_held_at_it_while_another_account_keeps_its_rate(
    quotas: Setup,
) -> None:
    topic = _topic(quotas.broker, "quota")
    # globex alone: its throughput through this gateway at the rate it offers
    offered = 2_000_000
    alone = PacedProducer(quotas, "globex", topic, offered, 3)
    alone.start()
    alone.join(20)
    globex_alone = alone.rate_between(0.5, 3)
    # then acme at 3× its quota and globex together
    acme = PacedProducer(quotas, "acme", topic, 3 * QUOTA, 10)
    globex = PacedProducer(quotas, "globex", topic, offered, 10)
    acme.start()
    globex.start()
    acme.join(30)
    globex.join(30)
    held, first_second = acme.rate_between(2, 10), acme.rate_between(0, 1)
    globex_with = globex.rate_between(2, 10)
    print(
        f"quota {QUOTA} B/s: acme at 3× held at {held:.0f} B/s ({held / QUOTA:.3f}× over 2–10 s; "
        f"first second {first_second:.0f}); globex alone {globex_alone:.0f} B/s, beside acme "
        f"{globex_with:.0f} B/s ({globex_with / globex_alone:.3f}×)"
    )
    assert not acme.errors and not globex.errors, (acme.errors[:3], globex.errors[:3])
    print("per second:", [round(acme.rate_between(i, i + 1) / QUOTA, 2) for i in range(10)])
    assert 0.75 * QUOTA <= held <= 1.25 * QUOTA
    assert globex_with >= 0.8 * globex_alone
    # the client was told (throttle_time_ms in its responses), and so is ops
    assert acme.throttled_ms > 0 and globex.throttled_ms == 0
    metrics = quotas.metrics()
    assert 'streamtoll_gateway_throttle_seconds_total{account="acme",direction="produce"}' in metrics
    assert 'account="globex"' not in metrics.split("throttle_seconds_total")[1].split("# HELP")[0]
    assert '"msg": "account throttled", "account": "acme"' in quotas.gw.log()


def test_a_consumer_over_its_consume_quota_is_held_at_it(quotas: Setup) -> None:
    topic = _topic(quotas.broker, "cquota")
    # small batches: a fetch returns whole batches, and the records before the fetch offset in a
    # batch are metered (and counted by the quota) but dropped by the client
    direct = Producer({"bootstrap.servers": quotas.broker.bootstrap, "linger.ms": 20, "batch.size": 16384})
    for i in range(8000):  # 8 MB: more than the 6 s read below can take at the quota
        direct.produce(topic, b"c" * VALUE, partition=i % 2)
    assert direct.flush(30) == 0
    consumer = Consumer(
        quotas.config(
            "acme",
            **{
                "group.id": f"g-{uuid.uuid4().hex}",
                "fetch.max.bytes": 65536,
                "message.max.bytes": 65536,
                "max.partition.fetch.bytes": 32768,
                "fetch.queue.backoff.ms": 10,
            },
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
    got: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < 6:
        got += [time.monotonic() - started for m in consumer.consume(1000, 0.1) if not m.error()]
    consumer.close()
    rate = sum(1 for t in got if 2 <= t < 6) * VALUE / 4
    print(f"consume quota {QUOTA} B/s: held at {rate:.0f} B/s ({rate / QUOTA:.3f}× over 2–6 s)")
    assert 0.75 * QUOTA <= rate <= 1.25 * QUOTA
    assert 'throttle_seconds_total{account="acme",direction="consume"}' in quotas.metrics()


def _produce_one(setup: Setup, account: str, topic: str) -> KafkaError | None:
    p = Producer(setup.config(account, **{"message.send.max.retries": 0}))
    errors: list[KafkaError | None] = []
    p.produce(topic, b"blocked?", on_delivery=lambda err, _m: errors.append(err))
    p.flush(15)
    return errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT)


def _fetch_all(setup: Setup, account: str, topic: str, want: int, seconds: float = 8) -> tuple[int, list[KafkaError]]:
    c = Consumer(setup.config(account, **{"group.id": f"g-{uuid.uuid4().hex}", "fetch.error.backoff.ms": 100}))
    c.assign([TopicPartition(topic, p, 0) for p in range(2)])
    got, errors = 0, []
    deadline = time.monotonic() + seconds
    while got < want and time.monotonic() < deadline:
        for m in c.consume(100, 0.2):
            if m.error():
                errors.append(m.error())
            else:
                got += 1
        if errors and not got:
            break
    c.close()
    return got, errors


def test_a_block_refuses_produce_with_the_reason_and_fetch_only_when_the_cap_says_so(quotas: Setup) -> None:
    topic = _topic(quotas.broker, "block")
    assert _produce_one(quotas, "globex", topic) is None
    audit = AuditLog(quotas.broker.bootstrap, quotas.env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    audit.wait(lambda: audit.totals(topic, PRODUCE)[0] == 1)

    decided = quotas.decide("globex", "produce_bytes", "block")
    started, written = time.monotonic(), 1
    while (err := _produce_one(quotas, "globex", topic)) is None:  # until the gateway has the decision
        written += 1
        assert time.monotonic() - started < 15
    print(f"block enforced {time.monotonic() - started:.2f} s after it was published")
    assert err.code() == KafkaError.POLICY_VIOLATION, err
    # librdkafka shows only the code; the reason is in each partition's error message (Produce v8+)
    host, port = quotas.gw.bootstrap.rsplit(":", 1)
    raw = RawClient(host, int(port))
    cred = quotas.creds["globex"]
    assert _scram_login(raw, "SCRAM-SHA-512", cred["username"], cred["password"]) == (0, 0)
    data = tuple(PartitionProduceData(index=i32(p), records=b"never forwarded") for p in (0, 1))
    request = ProduceRequest(
        transactional_id=None,
        acks=i16(-1),
        timeout=timedelta(seconds=10),
        topic_data=(TopicProduceData(name=topic, partition_data=data),),
    )
    resp = raw.request(protocol.PRODUCE, 9, request)
    raw.close()
    parts = [(p.index, p.error_code, p.error_message) for t in resp.responses for p in t.partition_responses]
    assert parts == [(0, 44, decided.reason), (1, 44, decided.reason)]
    # fetch keeps working (no block_fetch); the refused produce never reached the broker or the audit
    got, errors = _fetch_all(quotas, "globex", topic, written)
    assert (got, errors) == (written, [])
    audit.wait(lambda: False, timeout=1)
    assert audit.totals(topic, PRODUCE)[0] == written
    # another account is not blocked
    assert _produce_one(quotas, "acme", topic) is None

    quotas.decide("globex", "produce_bytes", "block", block_fetch=True)
    deadline = time.monotonic() + 15
    while (fetched := _fetch_all(quotas, "globex", topic, 1, seconds=2))[0]:  # a consumer gets nothing
        assert time.monotonic() < deadline
    print(f"a blocked fetch, as the consumer saw it: {fetched[1][:1]}")

    quotas.decide("globex", "produce_bytes", "ok")
    deadline = time.monotonic() + 15
    while _produce_one(quotas, "globex", topic) is not None:
        assert time.monotonic() < deadline
    metrics = quotas.metrics()
    assert 'streamtoll_gateway_blocked_requests_total{account="globex",api="produce"}' in metrics
    assert 'streamtoll_gateway_blocked_requests_total{account="globex",api="fetch"}' in metrics
    log = quotas.gw.log()
    assert "account blocked" in log and "account no longer blocked" in log


def test_a_throttle_decision_holds_an_aiokafka_producer_at_the_floor(quotas: Setup) -> None:
    """A ``throttle`` decision holds initech's produce (no plan limit) at the cap's floor. (An
    account of its own: the rate counts the last 11 s, and another test's traffic would count.)"""
    from aiokafka import AIOKafkaProducer

    floor = 300_000
    quotas.decide("initech", "produce_records", "throttle", floor_bytes_per_second=floor)
    topic = _topic(quotas.broker, "floor")
    cred = quotas.creds["initech"]

    async def push(seconds: float) -> list[float]:
        p = AIOKafkaProducer(
            bootstrap_servers=quotas.gw.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=cred["username"],
            sasl_plain_password=cred["password"],
            acks=1,
            linger_ms=5,
        )
        await p.start()
        done: list[float] = []
        started = time.monotonic()
        try:
            pending: set[asyncio.Future[Any]] = set()
            while time.monotonic() - started < seconds:
                fut = await p.send(topic, b"f" * VALUE)
                fut.add_done_callback(lambda _f: done.append(time.monotonic() - started))
                pending.add(fut)
                pending = {f for f in pending if not f.done()}
                if len(pending) > 50:
                    await asyncio.sleep(0.01)
        finally:
            await p.stop()
        return done

    deadline = time.monotonic() + 10  # the gateway has the decision (its log says so)
    while not any('"cap decision"' in line and '"initech"' in line for line in quotas.gw.log().splitlines()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = asyncio.run(push(6))
    rate = sum(1 for t in done if 2 <= t < 6) * VALUE / 4
    per_second = [round(sum(1 for t in done if i <= t < i + 1) * VALUE / floor, 2) for i in range(6)]
    print(f"floor {floor} B/s: aiokafka held at {rate:.0f} B/s ({rate / floor:.3f}× over 2–6 s; {per_second})")
    quotas.decide("initech", "produce_records", "ok")
    assert 0.75 * floor <= rate <= 1.25 * floor


def test_a_client_that_ignores_throttle_time_is_held_at_its_requests_per_second(quotas: Setup) -> None:
    """A raw client pipelines Metadata requests and never waits: the mute alone holds it at the
    account's requests per second, and every response it gets carries ``throttle_time_ms``."""
    from kio.schema.metadata.v12.request import MetadataRequest

    limit = 20
    quotas.entitle(Entitlement("hooli", limits=Limits(None, None, limit)))
    host, port = quotas.gw.bootstrap.rsplit(":", 1)
    raw = RawClient(host, int(port))
    cred = quotas.creds["hooli"]
    assert _scram_login(raw, "SCRAM-SHA-512", cred["username"], cred["password"]) == (0, 0)
    metadata = MetadataRequest(topics=(), allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    in_force = (
        '"account limits", "account": "hooli", "produce_bytes_per_second": null, '
        f'"consume_bytes_per_second": null, "requests_per_second": {limit}.0'
    )
    deadline = time.monotonic() + 10
    while in_force not in quotas.gw.log():  # probes well under the limit until the gateway has it
        assert time.monotonic() < deadline
        assert not raw.request(protocol.METADATA, 12, metadata).throttle_time
        time.sleep(0.2)
    n = 3 * limit
    for _ in range(n):
        raw.send(protocol.METADATA, 12, metadata)
    throttles, at = [], []
    for _ in range(n):
        throttles.append(raw.receive()[1].throttle_time)
        at.append(time.monotonic())
    raw.close()
    quotas.entitle(Entitlement("hooli"))
    # the first second's allowance goes at once and the requests after it wait until that second
    # is paid for (throttles of 50, 100, … ms); then the mute alone holds the client at the limit
    rate = limit / (at[-1] - at[-limit - 1])
    print(f"requests quota {limit}/s: a pipelining client that ignores throttle_time held at {rate:.1f}/s")
    assert 0.5 * limit <= rate <= 1.25 * limit
    assert all(t > timedelta(0) for t in throttles[-limit:])
    assert 'streamtoll_gateway_throttle_seconds_total{account="hooli",direction="requests"}' in quotas.metrics()
