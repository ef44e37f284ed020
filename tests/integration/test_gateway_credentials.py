"""Clients authenticating to the gateway with credentials streamtoll issued
(``streamtoll credentials``, ``GATEWAY_AUTH=streamtoll``): real broker, real gateway process, the
real command line against PostgreSQL, confluent-kafka and aiokafka with SCRAM, and a raw client
for what no library sends (requests before authentication, a second handshake)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from gateway import protocol
from gateway.security import scram_client_final
from streamtoll.embedded import EmbeddedBroker

from .conftest import isolated_env
from .kafka_wire import RawClient
from .test_gateway import AuditLog, GatewayProcess

pytestmark = pytest.mark.integration

PRODUCE, FETCH = "io.streamtoll.kafka.produce", "io.streamtoll.kafka.fetch"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "credentials", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Setup:
    def __init__(self, env: dict[str, str], gw: GatewayProcess, audit: AuditLog, engine: sa.Engine) -> None:
        self.env, self.gw, self.audit, self.engine = env, gw, audit, engine

    def issue(self, name: str) -> dict[str, Any]:
        out = _cli(self.env, "create", "--account", "acme", "--name", name, "-o", "json")
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc


@pytest.fixture(scope="module")
def setup(
    broker: EmbeddedBroker, module_catalog: tuple[str, sa.Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gwcreds")
    url, engine = module_catalog
    env = isolated_env(broker.bootstrap)
    env["STREAMTOLL_TOPIC_CREDENTIALS"] = env["STREAMTOLL_TOPIC_PROXY_AUDIT"].replace("proxy-audit", "credentials")
    env["STREAMTOLL_DATABASE_URL"] = url
    setup = Setup(env, None, None, engine)  # type: ignore[arg-type]
    setup.first = setup.issue("orders-svc")  # type: ignore[attr-defined]
    gw = GatewayProcess({**env, "STREAMTOLL_GATEWAY_AUTH": "streamtoll"}, tmp / "gateway.log").start()
    setup.gw = gw
    setup.audit = AuditLog(broker.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    try:
        yield setup
    finally:
        gw.stop()


def _topic(broker: EmbeddedBroker, prefix: str) -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    return topic


def _sasl(gw: GatewayProcess, mechanism: str, cred: dict[str, Any], password: str | None = None) -> dict[str, Any]:
    return {
        "bootstrap.servers": gw.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": cred["username"],
        "sasl.password": password or cred["password"],
    }


def _scram_login(raw: RawClient, mechanism: str, username: str, password: str) -> tuple[int, int]:
    """(handshake error, final authenticate error) of a SCRAM login over a raw connection."""
    hs = raw.request(protocol.SASL_HANDSHAKE, 1, SaslHandshakeRequest(mechanism=mechanism))
    if hs.error_code != 0:
        return int(hs.error_code), -1
    nonce = uuid.uuid4().hex
    bare = f"n={username},r={nonce}"
    first = raw.request(protocol.SASL_AUTHENTICATE, 1, SaslAuthenticateRequest(auth_bytes=("n,," + bare).encode()))
    if first.error_code != 0:
        return 0, int(first.error_code)
    final, _ = scram_client_final(mechanism, password, bare, bytes(first.auth_bytes).decode(), nonce)
    last = raw.request(protocol.SASL_AUTHENTICATE, 1, SaslAuthenticateRequest(auth_bytes=final.encode()))
    return 0, int(last.error_code)


def _metadata() -> MetadataRequest:
    return MetadataRequest(topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False)


def test_a_partner_produces_and_consumes_with_its_scram_credential_billed_to_its_account(
    broker: EmbeddedBroker, setup: Setup
) -> None:
    cred = setup.first  # type: ignore[attr-defined]
    assert cred["username"] == "acme/orders-svc" and cred["principal"] == "User:acme/orders-svc"
    # PostgreSQL holds salted keys, never the password
    with setup.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM credential_keys")).all()
    assert {r.mechanism for r in stored} == {"SCRAM-SHA-512", "SCRAM-SHA-256"}
    assert all(cred["password"].encode() not in b"".join(bytes(x) for x in r if isinstance(x, bytes)) for r in stored)

    topic = _topic(broker, "creds")
    producer = Producer({**_sasl(setup.gw, "SCRAM-SHA-512", cred), "linger.ms": 5, "client.id": "cred-producer"})
    delivered: list[Any] = []
    for i in range(100):
        producer.produce(topic, b"v%03d" % i, partition=i % 2, on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(20) == 0 and delivered == [None] * 100
    consumer = Consumer(
        {**_sasl(setup.gw, "SCRAM-SHA-256", cred), "group.id": f"g-{uuid.uuid4().hex}", "client.id": "cred-consumer"}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
    got = 0
    deadline = time.monotonic() + 20
    while got < 100 and time.monotonic() < deadline:
        got += sum(1 for m in consumer.consume(500, 0.2) if not m.error())
    consumer.close()
    assert got == 100

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTP

    async def aio() -> int:
        common = {
            "bootstrap_servers": setup.gw.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": cred["username"],
            "sasl_plain_password": cred["password"],
        }
        p = AIOKafkaProducer(client_id="aio-cred-producer", acks=1, **common)
        await p.start()
        try:
            await asyncio.gather(*[await p.send(topic, b"a%03d" % i, partition=i % 2) for i in range(50)])
        finally:
            await p.stop()
        c = AIOKafkaConsumer(client_id="aio-cred-consumer", group_id=None, **common)
        await c.start()
        n = 0
        try:
            tps = [AioTP(topic, p) for p in range(2)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = time.monotonic() + 20
            while n < 150 and time.monotonic() < end:
                n += sum(len(v) for v in (await c.getmany(timeout_ms=500)).values())
        finally:
            await c.stop()
        return n

    assert asyncio.run(aio()) == 150

    audit = setup.audit
    audit.wait(lambda: audit.totals(topic, PRODUCE)[0] >= 150 and audit.totals(topic, FETCH)[0] >= 250)
    assert audit.totals(topic, PRODUCE)[0] == 150
    assert {e["subject"] for e in audit.for_topic(topic)} == {"User:acme/orders-svc"}

    # billing attributes the credential's principal to its account with no client rule (the sample
    # accounts' rules would give "User:acme/..." to nobody: they name "User:acme-*"): the usage the
    # events became, read and attributed where reports, statements and billing runs read it
    from datetime import UTC, datetime

    from billing.adapters.sink import upsert_windows
    from billing.services.usage import usage_rows

    from .seed import w

    records, size = audit.totals(topic, PRODUCE)
    upsert_windows(setup.engine, [w(3, 10, "proxy", "User:acme/orders-svc", "produce", topic, b=size, r=records)])
    rows = usage_rows(setup.engine, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert [(r["account"], r["records"]) for r in rows if r["topic"] == topic] == [("acme", 150)]

    # a wrong password fails authentication (and nothing of it reaches the broker)
    errors: list[KafkaError] = []
    bad = Producer({**_sasl(setup.gw, "SCRAM-SHA-512", cred, "not-the-password"), "error_cb": errors.append})
    bad.produce(topic, b"never")
    deadline = time.monotonic() + 10
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        bad.poll(0.1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert bad.flush(0) == 1  # still undelivered
    host, port = setup.gw.bootstrap.rsplit(":", 1)
    raw = RawClient(host, int(port))
    assert _scram_login(raw, "SCRAM-SHA-256", "acme/orders-svc", "wrong") == (0, 58)
    assert raw.closed_by_peer()


def test_requests_before_authentication_unoffered_mechanisms_and_second_handshakes_are_refused(
    setup: Setup,
) -> None:
    host, port = setup.gw.bootstrap.rsplit(":", 1)
    cred = setup.first  # type: ignore[attr-defined]
    # a request other than ApiVersions / SaslHandshake before authentication: closed, unanswered
    raw = RawClient(host, int(port))
    raw.send(protocol.METADATA, 12, _metadata())
    assert raw.closed_by_peer()
    # a mechanism not offered (PLAIN is offered only over TLS)
    for mechanism in ("PLAIN", "GSSAPI"):
        raw = RawClient(host, int(port))
        hs = raw.request(protocol.SASL_HANDSHAKE, 1, SaslHandshakeRequest(mechanism=mechanism))
        assert hs.error_code == 33 and set(hs.mechanisms) == {"SCRAM-SHA-512", "SCRAM-SHA-256"}
        assert raw.closed_by_peer()
    # ApiVersions before authentication is answered by the gateway itself (with the SASL APIs it
    # answers): an unauthenticated client never makes it open a broker connection
    from kio.schema.api_versions.v3.request import ApiVersionsRequest

    raw = RawClient(host, int(port))
    versions = raw.request(
        protocol.API_VERSIONS, 3, ApiVersionsRequest(client_software_name="raw", client_software_version="1")
    )
    offered = {int(k.api_key) for k in versions.api_keys}
    assert {protocol.PRODUCE, protocol.FETCH, protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE} <= offered
    raw.close()
    import httpx

    metrics = httpx.get(f"http://127.0.0.1:{setup.gw.metrics_port}/metrics").text
    assert 'streamtoll_gateway_requests_total{api="api_versions"}' not in metrics  # none forwarded, by anyone
    assert 'streamtoll_gateway_requests_total{api="metadata"}' in metrics
    # a second handshake on an authenticated connection
    raw = RawClient(host, int(port))
    assert _scram_login(raw, "SCRAM-SHA-512", cred["username"], cred["password"]) == (0, 0)
    assert raw.request(protocol.METADATA, 12, _metadata()).brokers  # authenticated: forwarded
    hs = raw.request(protocol.SASL_HANDSHAKE, 1, SaslHandshakeRequest(mechanism="SCRAM-SHA-512"))
    assert hs.error_code == 34
    assert raw.closed_by_peer()


def _login_eventually(gw: GatewayProcess, username: str, password: str) -> RawClient:
    """An authenticated raw connection, retried while the gateway has not yet read the change."""
    host, port = gw.bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + 10
    while True:
        raw = RawClient(host, int(port))
        result = _scram_login(raw, "SCRAM-SHA-512", username, password)
        if result == (0, 0):
            return raw
        raw.close()
        assert time.monotonic() < deadline, result
        time.sleep(0.05)


def test_a_rotated_credential_takes_both_passwords_during_the_overlap(setup: Setup) -> None:
    cred = setup.issue("rotated-svc")
    _login_eventually(setup.gw, cred["username"], cred["password"]).close()
    out = _cli(setup.env, "rotate", cred["id"], "--overlap", "1h", "-o", "json")
    assert out.returncode == 0, out.stderr
    rotated = json.loads(out.stdout)
    assert rotated["username"] == cred["username"] and rotated["password"] != cred["password"]
    _login_eventually(setup.gw, cred["username"], rotated["password"]).close()
    _login_eventually(setup.gw, cred["username"], cred["password"]).close()  # the overlap
    listed = json.loads(_cli(setup.env, "list", "--account", "acme", "-o", "json").stdout)
    row = next(c for c in listed if c["id"] == cred["id"])
    assert row["state"] == "active" and row["old_password_valid_until"]


def test_a_revoked_credential_fails_and_its_open_connections_close(setup: Setup) -> None:
    cred = setup.issue("revoked-svc")
    host, port = setup.gw.bootstrap.rsplit(":", 1)
    raw = _login_eventually(setup.gw, cred["username"], cred["password"])
    assert raw.request(protocol.METADATA, 12, _metadata()).brokers
    started = time.monotonic()
    revoke = subprocess.Popen(
        [sys.executable, "-m", "streamtoll.cli", "credentials", "revoke", cred["id"]],
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert raw.closed_by_peer(timeout=15)
    closed = time.monotonic()
    _, err = revoke.communicate(timeout=30)
    assert revoke.returncode == 0, err
    cli_done = time.monotonic()
    print(
        f"revocation: connection closed {closed - started:.2f} s after `credentials revoke` started "
        f"(the command, Python start-up included, took {cli_done - started:.2f} s)"
    )
    assert closed - started < 10
    raw = RawClient(host, int(port))
    assert _scram_login(raw, "SCRAM-SHA-512", cred["username"], cred["password"]) == (0, 58)
    listed = json.loads(_cli(setup.env, "list", "--all", "-o", "json").stdout)
    assert {(c["username"], c["state"]) for c in listed} >= {
        ("acme/revoked-svc", "revoked"),
        ("acme/orders-svc", "active"),
    }


def test_a_revocation_whose_publication_a_crash_cut_short_is_repaired_by_the_next_publication(
    setup: Setup,
) -> None:
    """The database write happened, the publication did not (the process died between them):
    ``credentials publish`` (and ``streamtoll api`` at start, which runs the same) publishes the
    database's state, and the gateway closes the connection then."""
    from billing.services.credentials import revoke_credential

    cred = setup.issue("crashed-svc")
    raw = _login_eventually(setup.gw, cred["username"], cred["password"])
    revoke_credential(setup.engine, cred["id"])  # and nothing published
    assert raw.request(protocol.METADATA, 12, _metadata()).brokers  # the gateways do not know yet
    out = _cli(setup.env, "publish")
    assert out.returncode == 0, out.stderr
    assert raw.closed_by_peer(timeout=10)


def test_a_client_the_gateway_authenticated_reaches_a_sasl_broker_as_the_gateway() -> None:
    """UpstreamAuth.GATEWAY: the client logs in to the gateway with its streamtoll credential; its
    upstream connection logs in to the (SASL-only) broker with the gateway's own identity
    (GATEWAY_UPSTREAM_SASL_*), never the client's; its events carry the credential's principal."""
    from metering.credentials import Credential, scram_key

    from .test_gateway_security import FakeUpstream, _connect, _gateway

    credential = Credential(
        "cred_x", "acme", "acme/orders-svc", "active", (scram_key("SCRAM-SHA-512", "partner-pw", iterations=4096),)
    )

    class Store:
        def find(self, username: str) -> Credential | None:
            return credential if username == credential.username else None

    own = {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "gw", "sasl_password": "gw-secret"}

    async def main() -> None:
        async with FakeUpstream() as up, _gateway(up, **own) as (gw, sink):
            gw.credentials = Store()
            client = await _connect(gw)
            assert await client.scram("acme/orders-svc", "partner-pw") == 0
            assert (await client.produce("t-cred", 3)).responses[0].partition_responses[0].error_code == 0
            client.close()
            assert up.logins == ["gw", "gw"]  # discovery, then the client's upstream connection
            assert sink.subjects() == [("User:acme/orders-svc", "User:acme/orders-svc")]

    asyncio.run(main())
