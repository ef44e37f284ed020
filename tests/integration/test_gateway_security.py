"""The gateway's security: TLS on its listeners (a CA made in the test), principals from client
certificates and from SASL exchanges it passes through, TLS and SASL toward the upstream.

The dev broker (tansu) cannot take SASL logins here (its users live in its own storage and are
created through an authenticated connection), so the SASL exchanges run against a small fake
upstream in the test that speaks SaslHandshake / SaslAuthenticate (a real SCRAM server side,
checking the proof) and answers Metadata and Produce; TLS toward the upstream runs against the
real broker behind a TLS terminator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import ssl
import struct
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v4.response import MetadataResponse, MetadataResponseBroker
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.produce.v8.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v8.response import PartitionProduceResponse, ProduceResponse, TopicProduceResponse
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v1.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_reader
from kio.static.primitive import i16, i32, i64

from gateway import protocol
from gateway.errors import UpstreamError
from gateway.proxy import Gateway
from gateway.security import ListenerTLS, UpstreamSecurity, scram_client_final
from gateway.settings import GatewaySettings
from gateway.wire import parse_request_header
from streamtoll.embedded import EmbeddedBroker, free_port
from tests.tls import CertAuthority, make_ca

from .conftest import isolated_env
from .kafka_wire import encode_request
from .test_gateway import AuditLog, GatewayProcess

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-secret", "gw": "gw-secret"}
SALT = b"test-salt-123456"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


# -- TLS on the gateway's listeners, against the real broker ------------------------------------


def test_a_mutual_tls_client_produces_and_consumes_metered_as_its_certificate(
    broker: EmbeddedBroker, ca: CertAuthority, tmp_path: Path
) -> None:
    cert, key = ca.client("alice", "/O=Example Corp/OU=eng/CN=alice")
    env = {
        **isolated_env(broker.bootstrap),
        "STREAMTOLL_GATEWAY_TLS_CERT": str(ca.server_cert),
        "STREAMTOLL_GATEWAY_TLS_KEY": str(ca.server_key),
        "STREAMTOLL_GATEWAY_TLS_CLIENT_CA": str(ca.ca),
    }
    gw = GatewayProcess(env, tmp_path / "gateway.log").start()
    audit = AuditLog(broker.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    try:
        topic = f"gw-tls-{uuid.uuid4().hex[:6]}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
        tls = {
            "bootstrap.servers": f"localhost:{gw.port}",  # the server certificate names localhost
            "security.protocol": "SSL",
            "ssl.ca.location": str(ca.ca),
            "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key),
        }
        producer = Producer({**tls, "linger.ms": 5, "client.id": "tls-producer"})
        values = [os.urandom(50 + i) for i in range(200)]
        delivered: list[Any] = []
        for v in values:
            producer.produce(topic, v, on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(20) == 0 and delivered == [None] * len(values)

        consumer = Consumer(
            {**tls, "group.id": f"g-{uuid.uuid4().hex}", "enable.auto.commit": False, "client.id": "tls-consumer"}
        )
        consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
        got: list[bytes] = []
        for _ in range(100):
            got += [m.value() for m in consumer.consume(500, 0.2) if not m.error()]
            if len(got) >= len(values):
                break
        consumer.close()
        assert sorted(got) == sorted(values)

        principal = "User:CN=alice,OU=eng,O=Example Corp"
        audit.wait(lambda: audit.totals(topic, "io.streamtoll.kafka.fetch")[0] >= len(values))
        assert audit.totals(topic, "io.streamtoll.kafka.produce")[0] == len(values)
        assert audit.totals(topic, "io.streamtoll.kafka.fetch")[0] == len(values)
        assert {e["subject"] for e in audit.for_topic(topic)} == {principal}

        # no client certificate: no TLS session, no request reaches the broker
        no_cert = ssl.create_default_context(cafile=str(ca.ca))
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            no_cert.wrap_socket(
                socket.create_connection(("127.0.0.1", gw.port), timeout=5), server_hostname="localhost"
            ) as s,
        ):
            s.sendall(encode_request(18, 3, 1, _api_versions()))
            if not s.recv(4):
                raise ConnectionError("closed")
    finally:
        audit.consumer.close()
        assert gw.stop() == 0, gw.log()


def _api_versions() -> Any:
    from kio.schema.api_versions.v3.request import ApiVersionsRequest

    return ApiVersionsRequest(client_software_name="t", client_software_version="1")


# -- a fake upstream that speaks SASL ------------------------------------------------------------


def _scram_keys(password: str) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    return hashlib.sha512(client_key).digest(), hmac.new(salted, b"Server Key", "sha512").digest()


class FakeUpstream:
    """One broker (node 7) that takes SASL PLAIN and SCRAM-SHA-512 (a real server side: the
    client's proof is checked) and OAUTHBEARER (any token), and answers Metadata and Produce
    only on an authenticated connection."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.port = 0
        self.logins: list[str] = []

    async def __aenter__(self) -> FakeUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mechanism, user, scram = "", None, {}
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                head = parse_request_header(frame)
                key, version = head.api_key, head.api_version
                body = protocol.decode_request(
                    frame, key, version, protocol.request_body_offset(frame, key, version, head.end)
                )
                if key == protocol.SASL_HANDSHAKE:
                    mechanism = body.mechanism
                    ok = mechanism in ("PLAIN", "SCRAM-SHA-512", "OAUTHBEARER")
                    answer: Any = SaslHandshakeResponse(
                        error_code=ErrorCode(i16(0 if ok else 33)), mechanisms=("PLAIN", "SCRAM-SHA-512", "OAUTHBEARER")
                    )
                elif key == protocol.SASL_AUTHENTICATE:
                    data, error, out = bytes(body.auth_bytes), 0, b""
                    if mechanism == "PLAIN":
                        _, name, password = data.decode().split("\0")
                        if USERS.get(name) == password:
                            user = name
                        else:
                            error = 58
                    elif mechanism == "OAUTHBEARER":
                        user = "token"
                    elif "first" not in scram:
                        bare = data.decode()[3:]  # after "n,,"
                        attrs = dict(a.split("=", 1) for a in bare.split(","))
                        name = attrs["n"].replace("=2C", ",").replace("=3D", "=")
                        first = f"r={attrs['r']}srv,s={base64.b64encode(SALT).decode()},i=4096"
                        scram.update(first=first, bare=bare, name=name)
                        out = first.encode()
                    else:
                        final = data.decode()
                        without_proof, _, proof = final.rpartition(",p=")
                        stored, server_key = _scram_keys(USERS.get(scram["name"], "\0"))
                        message = f"{scram['bare']},{scram['first']},{without_proof}".encode()
                        signature = hmac.new(stored, message, "sha512").digest()
                        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
                        if hashlib.sha512(client_key).digest() == stored:
                            user = scram["name"]
                            out = b"v=" + base64.b64encode(hmac.new(server_key, message, "sha512").digest())
                        else:
                            error = 58
                        scram.clear()
                    if user is not None and error == 0 and not out.startswith(b"r="):
                        self.logins.append(user)
                    answer = SaslAuthenticateResponse(
                        error_code=ErrorCode(i16(error)),
                        error_message="bad credentials" if error else None,
                        auth_bytes=out,
                        session_lifetime=timedelta(0),
                    )
                elif user is None:
                    return  # an unauthenticated request on a SASL listener: the broker closes
                elif key == protocol.METADATA:
                    answer = MetadataResponse(
                        throttle_time=timedelta(0),
                        brokers=(MetadataResponseBroker(node_id=i32(7), host="127.0.0.1", port=i32(self.port)),),
                        cluster_id="fake",
                        controller_id=i32(7),
                        topics=(),
                    )
                elif key == protocol.PRODUCE:
                    answer = ProduceResponse(
                        responses=tuple(
                            TopicProduceResponse(
                                name=t.name,
                                partition_responses=tuple(
                                    PartitionProduceResponse(
                                        index=p.index,
                                        error_code=ErrorCode(i16(0)),
                                        base_offset=i64(0),
                                        log_append_time=None,
                                        log_start_offset=i64(0),
                                        record_errors=(),
                                        error_message=None,
                                    )
                                    for p in t.partition_data
                                ),
                            )
                            for t in body.topic_data
                        ),
                        throttle_time=timedelta(0),
                    )
                else:
                    return
                payload = struct.pack(">i", head.correlation_id) + protocol.encode(answer)
                writer.write(struct.pack(">i", len(payload)) + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[bytes, bytes]] = []

    def write(self, events: list[tuple[bytes, bytes]]) -> None:
        self.events.extend(events)

    def accepting(self) -> bool:
        return True

    def synced(self) -> asyncio.Future[None] | None:
        return None

    def subjects(self) -> list[tuple[str, str]]:
        return [(k.decode(), json.loads(v)["subject"]) for k, v in self.events]


class Client:
    """A raw async Kafka client (kio types) for one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.cid = reader, writer, 0

    async def call(self, key: int, version: int, body: Any) -> Any:
        self.cid += 1
        self.writer.write(encode_request(key, version, self.cid, body, client_id="sasl-client"))
        await self.writer.drain()
        size = struct.unpack(">i", await self.reader.readexactly(4))[0]
        frame = await self.reader.readexactly(size)
        value, _ = entity_reader(load_response_schema(key, version))(
            frame, protocol.response_body_offset(frame, key, version)
        )
        return value

    async def sasl(self, mechanism: str, *steps: bytes) -> list[Any]:
        hs = await self.call(protocol.SASL_HANDSHAKE, 1, SaslHandshakeRequest(mechanism=mechanism))
        assert hs.error_code == 0
        return [await self.call(protocol.SASL_AUTHENTICATE, 1, SaslAuthenticateRequest(auth_bytes=s)) for s in steps]

    async def scram(self, user: str, password: str) -> int:
        nonce = "clientnonce"
        bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
        (first,) = await self.sasl("SCRAM-SHA-512", f"n,,{bare}".encode())
        final, _ = scram_client_final("SCRAM-SHA-512", password, bare, bytes(first.auth_bytes).decode(), nonce)
        resp = await self.call(protocol.SASL_AUTHENTICATE, 1, SaslAuthenticateRequest(auth_bytes=final.encode()))
        return int(resp.error_code)

    async def produce(self, topic: str, records: int) -> Any:
        header = struct.pack(">qiibIhiqqqhii", 0, 49 + 40, 0, 2, 0, 0, records - 1, 0, 0, -1, -1, -1, records)
        batch = header + b"r" * 40
        req = ProduceRequest(
            transactional_id=None,
            acks=i16(1),
            timeout=timedelta(seconds=5),
            topic_data=(
                TopicProduceData(name=topic, partition_data=(PartitionProduceData(index=i32(0), records=batch),)),
            ),
        )
        return await self.call(protocol.PRODUCE, 8, req)

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def _gateway(
    upstream: FakeUpstream | tuple[str, int], tmp_tls: ListenerTLS | None = None, **security: Any
) -> AsyncIterator[tuple[Gateway, ListSink]]:
    address = ("127.0.0.1", upstream.port) if isinstance(upstream, FakeUpstream) else upstream
    settings = GatewaySettings(
        listen_port=free_port(), broker_ports=(free_port(),), upstream_security=UpstreamSecurity(**security)
    )
    sink = ListSink()
    gw = Gateway(settings, [address], sink)
    await gw.start()
    try:
        yield gw, sink
    finally:
        await gw.drain(5)


async def _connect(gw: Gateway) -> Client:
    return Client(*await asyncio.open_connection("127.0.0.1", gw.settings.listen_port))


def test_sasl_passed_through_names_the_principal_once_the_broker_accepts() -> None:
    token = ".".join(
        base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in (b'{"alg":"none"}', b'{"sub":"svc-orders"}', b"sig")
    )

    async def main() -> None:
        # the gateway's own PLAIN login is for its Metadata discovery only
        own = {
            "protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "gw",
            "sasl_password": "gw-secret",
        }
        async with FakeUpstream() as up, _gateway(up, **own) as (gw, sink):
            # the gateway adds no login of its own to a client's connection: without SASL the
            # (SASL-only) broker closes it
            anon = await _connect(gw)
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await anon.produce("t", 1)
            anon.close()

            plain = await _connect(gw)
            (refused,) = await plain.sasl("PLAIN", b"\0alice\0wrong")
            assert refused.error_code == 58  # refused: the name in it is not taken
            (ok,) = await plain.sasl("PLAIN", b"\0alice\0alice-secret")
            assert ok.error_code == 0
            assert (await plain.produce("t-plain", 3)).responses[0].partition_responses[0].error_code == 0

            scram = await _connect(gw)
            assert await scram.scram("mallory", "guess") == 58
            assert await scram.scram("alice", "alice-secret") == 0
            await scram.produce("t-scram", 2)

            oauth = await _connect(gw)
            await oauth.sasl("OAUTHBEARER", f"n,,\x01auth=Bearer {token}\x01\x01".encode())
            await oauth.produce("t-oauth", 4)
            for c in (plain, scram, oauth):
                c.close()

        by_topic = {}
        for key, value in sink.events:
            ev = json.loads(value)
            by_topic[ev["data"]["topic"]] = (key.decode(), ev["subject"], ev["data"]["records"])
        assert by_topic == {
            "t-plain": ("User:alice", "User:alice", 3),
            "t-scram": ("User:alice", "User:alice", 2),
            "t-oauth": ("User:svc-orders", "User:svc-orders", 4),
        }
        assert up.logins == ["gw", "alice", "alice", "token"]  # no login of the gateway's on clients' connections

    asyncio.run(main())


def test_the_gateways_own_identity_and_tls_toward_a_sasl_upstream(ca: CertAuthority) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(ca.server_cert, ca.server_key)

    async def main() -> None:
        async with FakeUpstream(server) as up:
            # SCRAM over TLS with the gateway's identity: its Metadata discovery is authenticated
            creds = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "gw", "ca": str(ca.ca)}
            async with _gateway(up, protocol="SASL_SSL", sasl_password="gw-secret", **creds) as (gw, sink):
                assert gw.topology.port_of == {7: gw.settings.broker_ports[0]}
                client = await _connect(gw)  # plaintext to the gateway, TLS from it to the broker
                assert await client.scram("alice", "alice-secret") == 0
                await client.produce("t-up", 5)
                client.close()
            assert up.logins == ["gw", "alice"]
            assert sink.subjects() == [("User:alice", "User:alice")]

            with pytest.raises(UpstreamError, match="refused the gateway's SASL SCRAM-SHA-512 login as 'gw'"):
                async with _gateway(up, protocol="SASL_SSL", sasl_password="wrong", **creds):
                    pass
            # a broker certificate the CA did not sign is not accepted
            other = make_ca(Path(ca.dir) / "other")
            with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
                async with _gateway(up, protocol="SSL", ca=str(other.ca)):
                    pass

    asyncio.run(main())


def test_tls_toward_the_real_broker(broker: EmbeddedBroker, ca: CertAuthority) -> None:
    """The broker behind a TLS terminator: discovery and forwarded requests go over TLS."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(ca.server_cert, ca.server_key)
    host, port = broker.bootstrap.rsplit(":", 1)
    terminated = 0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal terminated
        terminated += 1
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        tls = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=server)
        tls_port = tls.sockets[0].getsockname()[1]
        async with _gateway(("127.0.0.1", tls_port), protocol="SSL", ca=str(ca.ca)) as (gw, _):
            client = await _connect(gw)
            meta = await client.call(
                protocol.METADATA,
                12,
                MetadataRequest(
                    topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
                ),
            )
            assert [(b.host, b.port) for b in meta.brokers] == [("127.0.0.1", gw.settings.broker_ports[0])]
            client.close()
        tls.close()
        assert terminated == 2  # the discovery and the client's connection

    asyncio.run(main())
