"""The asyncio Kafka-protocol proxy: listeners, client connections, metering hooks, drain.

Clients bootstrap against the gateway's listen address; each upstream broker has a gateway port
of its own (:class:`Topology`), and every response that carries broker addresses is rewritten to
them, so a client never learns an upstream address and all its traffic passes the gateway.

Per client connection the gateway opens one upstream connection (to the bootstrap cluster for the
bootstrap port, to that broker for a broker port) and runs two loops: requests client → broker
and responses broker → client. Clients pipeline (several requests before the first response);
Kafka answers in order on a connection and every response starts with its request's correlation
id, so responses are matched by that id and a response to an unknown id ends the connection.

Requests pass through as the bytes the client sent. Only Produce requests are decoded (for their
counts, never their record data); of the responses, ApiVersions, Metadata, FindCoordinator and
DescribeCluster are decoded and rewritten, Produce and Fetch decoded for metering (a Produce
response is rewritten only when it carries node endpoints). Under ``GATEWAY_AUTH=streamtoll`` an
account with restricted access has its requests screened by :mod:`gateway.access` (the denied
part answered by the gateway, or merged back into the broker's answer).

A client that sends something the gateway cannot forward (a length over
``GATEWAY_MAX_REQUEST_BYTES`` or under a header, a truncated header, an API or version outside
``gateway.protocol.SUPPORTED``, a Produce that does not decode, a reused correlation id) has its
connection closed with one log line; the gateway and other clients go on.

A client that goes away with requests in flight still has them answered upstream: the gateway
waits for those responses (up to :data:`INFLIGHT_GRACE`) so an acknowledged produce is metered.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from kio.schema.metadata.v4.request import MetadataRequest
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.serial import entity_writer
from kio.static.primitive import i16, i32

from gateway import access, protocol
from gateway.authn import ClientAuth, advertise_sasl, api_versions_answer
from gateway.errors import ProtocolViolation, UpstreamError
from gateway.latency import LatencyHistogram
from gateway.metering import (
    CONSUME_TYPE,
    PRODUCE_TYPE,
    Counted,
    RequestContext,
    acknowledged,
    denied_events,
    events,
    fetch_counts,
)
from gateway.metering import produce_counts as count_produce
from gateway.principals import ANONYMOUS, ClientIdentity, observe_request, observe_response
from gateway.quota import ConnectionQuota, QuotaManager
from gateway.security import UpstreamAuth, UpstreamSecurity, authenticate, cert_principal
from gateway.settings import GatewaySettings
from gateway.wire import parse_request_header
from metering.entitlements import Entitlement

__all__ = ["ANONYMOUS", "INFLIGHT_GRACE", "AuditSink", "Gateway", "Topology", "discover_brokers"]

log = logging.getLogger(__name__)

INFLIGHT_GRACE = 30.0  # seconds a closing connection waits for responses to requests in flight
CONNECT_TIMEOUT = 10.0
_SIZE = 4


class AuditSink(Protocol):
    def write(self, events: list[tuple[bytes, bytes]]) -> None: ...

    def accepting(self) -> bool:
        """False while Produce and Fetch are to be refused (the audit journal is full)."""
        ...

    def synced(self) -> asyncio.Future[None] | None:
        """What a Produce response waits for before it goes back (the journal's fsync), if anything."""
        ...


class Topology:
    """Upstream brokers (node id → address, as the cluster last advertised it) and the gateway port
    each one has. Ports go by node id order at start; a broker first seen later takes the next
    free one (and ``on_new_broker`` opens its listener)."""

    def __init__(self, settings: GatewaySettings, on_new_broker: Callable[[int, int], None] | None = None) -> None:
        self.settings = settings
        self.port_of: dict[int, int] = {}
        self.node_of: dict[int, int] = {}
        self.upstream: dict[int, tuple[str, int]] = {}
        self.on_new_broker = on_new_broker
        self._warned: set[int] = set()

    def seed(self, brokers: dict[int, tuple[str, int]]) -> None:
        for node_id in sorted(brokers):
            self.address(node_id, *brokers[node_id])

    def address(self, node_id: int, host: str, port: int) -> tuple[str, int]:
        """The address clients are told for upstream broker ``node_id`` (which the upstream
        advertised as ``host:port``)."""
        self.upstream[node_id] = (host, port)
        gw_port = self.port_of.get(node_id)
        if gw_port is None:
            gw_port = self.settings.broker_port(len(self.port_of))
            if gw_port is None:
                if node_id not in self._warned:
                    self._warned.add(node_id)
                    log.error(
                        "an upstream broker has no gateway port (GATEWAY_BROKER_PORTS is too short): its clients "
                        "are sent to the bootstrap port",
                        extra={"node_id": node_id, "upstream": f"{host}:{port}"},
                    )
                return self.settings.advertised_host, self.settings.listen_port
            self.port_of[node_id] = gw_port
            self.node_of[gw_port] = node_id
            log.info(
                "upstream broker mapped", extra={"node_id": node_id, "upstream": f"{host}:{port}", "port": gw_port}
            )
            if self.on_new_broker is not None:
                self.on_new_broker(node_id, gw_port)
        return self.settings.advertised_host, gw_port


class Pending(NamedTuple):
    api_key: int
    api_version: int
    client_id: str
    produced: list[Counted] | None  # a Produce's per-partition counts
    acks: int = 0  # a Produce's acks (1 or -1: all)
    refusal: bytes | None = None  # the gateway's own answer (journal full), sent in its turn
    sent: float = 0.0  # time.monotonic() when it was written upstream (upstream latency)
    after: Callable[[bytes], bytes] | None = None  # access: puts the denied part back into the answer


def _frame(header: Any, body: Any) -> bytes:
    buf = io.BytesIO()
    entity_writer(type(header))(buf, header)
    entity_writer(type(body))(buf, body)
    data = buf.getvalue()
    return len(data).to_bytes(4, "big") + data


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    size = int.from_bytes(await reader.readexactly(_SIZE), "big", signed=True)
    if size < 0 or size > limit:
        raise ProtocolViolation(f"a frame length of {size} bytes is outside 0–{limit}")
    return await reader.readexactly(size)


async def _connect_any(
    addresses: list[tuple[str, int]], tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    errors = []
    for host, port in addresses:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            errors.append(f"{host}:{port}: {exc or type(exc).__name__}")
    raise UpstreamError("no upstream broker could be reached (" + "; ".join(errors) + ")")


async def discover_brokers(
    addresses: list[tuple[str, int]],
    security: UpstreamSecurity | None = None,
    tls: ssl.SSLContext | None = None,
) -> dict[int, tuple[str, int]]:
    """The upstream cluster's brokers (node id → advertised address), from a Metadata request
    (over TLS with ``tls``; authenticated with the gateway's own identity when ``security`` is SASL)."""
    reader, writer = await _connect_any(addresses, tls)
    try:
        if security is not None and security.sasl:
            await asyncio.wait_for(authenticate(reader, writer, security), CONNECT_TIMEOUT)
        header = RequestHeaderV1(
            request_api_key=i16(protocol.METADATA), request_api_version=i16(4), correlation_id=i32(1), client_id="gw"
        )
        writer.write(_frame(header, MetadataRequest(topics=(), allow_auto_topic_creation=False)))
        await writer.drain()
        frame = await asyncio.wait_for(_read_frame(reader, 64 << 20), CONNECT_TIMEOUT)
        resp = protocol.decode_response(frame, protocol.METADATA, 4, 4)
        return {int(b.node_id): (b.host, int(b.port)) for b in resp.brokers}
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolViolation) as exc:
        raise UpstreamError(f"the upstream cluster did not answer a Metadata request ({exc!r})") from exc
    finally:
        writer.close()


async def upstream_api_versions(
    addresses: list[tuple[str, int]],
    security: UpstreamSecurity | None = None,
    tls: ssl.SSLContext | None = None,
) -> dict[int, tuple[int, int]]:
    """The upstream's API ranges (ApiVersions v0, logged in as the gateway when SASL): what the
    gateway answers an ApiVersions before authentication with (GATEWAY_AUTH=streamtoll)."""
    from kio.schema.api_versions.v0.request import ApiVersionsRequest

    reader, writer = await _connect_any(addresses, tls)
    try:
        if security is not None and security.sasl:
            await asyncio.wait_for(authenticate(reader, writer, security), CONNECT_TIMEOUT)
        header = RequestHeaderV1(
            request_api_key=i16(protocol.API_VERSIONS),
            request_api_version=i16(0),
            correlation_id=i32(1),
            client_id="gw",
        )
        writer.write(_frame(header, ApiVersionsRequest()))
        await writer.drain()
        frame = await asyncio.wait_for(_read_frame(reader, 1 << 20), CONNECT_TIMEOUT)
        resp = protocol.decode_response(frame, protocol.API_VERSIONS, 0, 4)
        return {int(k.api_key): (int(k.min_version), int(k.max_version)) for k in resp.api_keys}
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolViolation) as exc:
        raise UpstreamError(f"the upstream cluster did not answer an ApiVersions request ({exc!r})") from exc
    finally:
        writer.close()


class ClientRefused(ProtocolViolation):
    """The gateway refused a client's authentication or a request before it: the connection closes
    once the answer (if any) is sent."""


class Connection:
    """One client connection and its upstream connection. ``principal`` is who the client is:
    ``User:ANONYMOUS`` until the gateway learns it from a SASL exchange or a client certificate
    (``identity``, :mod:`gateway.principals`)."""

    def __init__(
        self,
        gateway: Gateway,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: list[tuple[str, int]],
    ) -> None:
        self.gateway = gateway
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.upstream_addresses = upstream
        peer = writer.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        self.identity = ClientIdentity(tls_principal=cert_principal(writer.get_extra_info("peercert")))
        self.inflight: dict[int, Pending] = {}
        # correlation ids of acks=0 produces: Kafka sends them no response, but a broker that
        # does (tansu) must not have it mistaken for a protocol error; the newest few are kept
        self.unanswered: dict[int, None] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.client_gone = False
        self.requests_task: asyncio.Task[None] | None = None
        self.responses_task: asyncio.Task[None] | None = None
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.answering = False  # a response is on its way to the client (taken from inflight, not yet written)
        self.quota = ConnectionQuota()  # KIP-219 throttling (gateway.quota)
        # GATEWAY_AUTH=streamtoll: the gateway answers this client's SASL itself (gateway.authn)
        self.auth: ClientAuth | None = None
        if gateway.credentials is not None:
            self.auth = ClientAuth(gateway.credentials.find, writer.get_extra_info("sslcontext") is not None)
            self.identity.upstream_auth = UpstreamAuth.GATEWAY

    @property
    def principal(self) -> str:
        return self.identity.principal

    def _context(self, p: Pending) -> RequestContext:
        return RequestContext(self.principal, p.client_id, self.client_ip, self.gateway.virtual_cluster, p.api_version)

    async def run(self) -> None:
        requests = self.requests_task = asyncio.create_task(self._requests())
        try:
            await asyncio.wait({requests})
            if not requests.cancelled() and (err := requests.exception()) is not None:
                self._closing(err)
            responses = self.responses_task
            if responses is not None and self.inflight and not responses.done():
                idle = asyncio.create_task(self.idle.wait())
                await asyncio.wait({responses, idle}, timeout=INFLIGHT_GRACE, return_when=asyncio.FIRST_COMPLETED)
                idle.cancel()
                if self.inflight:
                    log.warning(
                        "closed with requests unanswered upstream",
                        extra={"conn": self.id, "requests": len(self.inflight)},
                    )
            if (
                responses is not None
                and responses.done()
                and not responses.cancelled()
                and (err := responses.exception()) is not None
            ):
                self._closing(err)
        finally:
            tasks = [t for t in (requests, self.responses_task) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.upstream_writer is not None:
                self.upstream_writer.close()
            self.writer.close()
            self.gateway.connections.discard(self)

    def revoke(self) -> None:
        """Its credential was revoked: close the connection now (requests in flight are dropped)."""
        log.info("client connection closed: its credential was revoked", extra={"conn": self.id})
        for task in (self.requests_task, self.responses_task):
            if task is not None:
                task.cancel()
        self.inflight.clear()
        self.idle.set()
        self.writer.close()

    @property
    def credential_id(self) -> str | None:
        return None if self.auth is None or self.auth.credential is None else self.auth.credential.id

    @property
    def account(self) -> str | None:
        """The account of the credential the client authenticated with (GATEWAY_AUTH=streamtoll)."""
        return None if self.auth is None or self.auth.credential is None else self.auth.credential.account

    def entitlement(self) -> Entitlement | None:
        """The account's entitlements now; None: unrestricted (no credential, or no record)."""
        store, account = self.gateway.entitlements, self.account
        return None if store is None or account is None else store.get(account)

    def _closing(self, exc: BaseException) -> None:
        if isinstance(exc, ClientRefused):
            log.warning("client connection closed: " + str(exc), extra={"conn": self.id, "client_ip": self.client_ip})
        elif isinstance(exc, ProtocolViolation):
            self.gateway.violations += 1
            log.warning(
                "client connection closed: not a request the gateway forwards",
                extra={"conn": self.id, "client_ip": self.client_ip, "error": str(exc)},
            )
        elif isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
            log.debug("connection ended", extra={"conn": self.id})
        else:
            log.error("client connection failed", extra={"conn": self.id, "error": repr(exc)}, exc_info=exc)

    async def _connect_upstream(self) -> asyncio.StreamWriter | None:
        """The upstream connection, opened at the first request the gateway forwards (so bytes
        that are not a request never reach a broker); None if no broker answers."""
        if self.upstream_writer is None:
            try:
                reader, self.upstream_writer = await _connect_any(self.upstream_addresses, self.gateway.upstream_tls)
                security = self.gateway.settings.upstream_security
                if self.identity.upstream_auth is UpstreamAuth.GATEWAY and security.sasl:
                    await asyncio.wait_for(authenticate(reader, self.upstream_writer, security), CONNECT_TIMEOUT)
            except (UpstreamError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.warning(
                    "client connection closed: upstream unreachable", extra={"conn": self.id, "error": str(exc)}
                )
                return None
            self.responses_task = asyncio.create_task(self._responses(reader))
        return self.upstream_writer

    async def _requests(self) -> None:
        gw = self.gateway
        limit = gw.settings.max_request_bytes
        while True:
            try:
                frame = await _read_frame(self.reader, limit)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ProtocolViolation(
                        f"the connection ended inside a request ({len(exc.partial)} bytes)"
                    ) from None
                self.client_gone = True
                return
            except ConnectionError:
                self.client_gone = True
                return
            head = parse_request_header(frame)
            key, version = head.api_key, head.api_version
            span = protocol.SUPPORTED.get(key)
            if key == protocol.API_VERSIONS:
                if version < 0:
                    raise ProtocolViolation(f"ApiVersions version {version}")
                if version > protocol.SUPPORTED[key][1]:
                    # newer than the gateway reads: answer as a broker would (KIP-511), and the
                    # client asks again with a version both understand
                    if self.inflight:
                        raise ProtocolViolation("ApiVersions of an unknown version behind other requests")
                    answer = protocol.unsupported_api_versions(head.correlation_id)
                    self.writer.write(len(answer).to_bytes(4, "big") + answer)
                    await self.writer.drain()
                    continue
            elif span is None:
                raise ProtocolViolation(f"API key {key} is not one the gateway forwards")
            elif not span[0] <= version <= span[1]:
                raise ProtocolViolation(f"{protocol.api_name(key)} version {version} is outside {span[0]}–{span[1]}")
            if self.auth is not None and await self._authenticate(frame, head.correlation_id, key, version, head):
                continue
            if self.quota.muted_until:  # throttled: muted until its throttle ends (gateway.quota)
                await gw.quotas.hold(self)
            blocked = gw.quotas.refusal(self, frame, key, version, head.correlation_id, head.end)
            if blocked is not None:  # a monthly cap blocks the account: answered here, never metered
                if blocked:
                    await self._answer_locally(head.correlation_id, key, version, head.client_id, blocked)
                continue
            after = None
            if (ent := self.entitlement()) is not None:  # topic and group access (gateway.access)
                screened = await self._screen(ent, frame, head)
                if screened is None:
                    continue
                frame, after = screened
            if key in (protocol.PRODUCE, protocol.FETCH) and not gw.audit.accepting():
                await self._refuse(frame, head.correlation_id, key, version, head.client_id, head.end)
                continue
            upstream = await self._connect_upstream()
            if upstream is None:
                return
            gw.requests[key] += 1
            observe_request(self.identity, key, version, frame, head.end)
            produced = None
            acks = 0
            expects_response = True
            if key == protocol.PRODUCE:
                body = protocol.request_body_offset(frame, key, version, head.end)
                request = protocol.decode_request(frame, key, version, body)
                produced = count_produce(request)
                acks = int(request.acks)
                if request.acks == 0:
                    expects_response = False
                    self.unanswered[head.correlation_id] = None
                    if len(self.unanswered) > 1000:
                        del self.unanswered[next(iter(self.unanswered))]
            if expects_response:
                if head.correlation_id in self.inflight:
                    raise ProtocolViolation(f"correlation id {head.correlation_id} is already in flight")
                self.inflight[head.correlation_id] = Pending(
                    key, version, head.client_id, produced, acks, sent=time.monotonic(), after=after
                )
                self.idle.clear()
            gw.quotas.requested(self, head.correlation_id, key, produced, expects_response)
            upstream.write(len(frame).to_bytes(4, "big") + frame)
            await upstream.drain()
            if not expects_response:  # acks=0: no answer will come; metered as sent
                pending = Pending(key, version, head.client_id, produced)
                gw.meter(PRODUCE_TYPE, self._context(pending), produced or [], acks=0, acknowledged=False)

    async def _screen(self, ent: Entitlement, frame: bytes, head: Any) -> tuple[bytes, Any] | None:
        """The request to forward and what to do with its answer, after the account's access was
        checked (:func:`gateway.access.screen`); None: the gateway answered it (or dropped a denied
        ``acks=0`` produce)."""
        key, version = head.api_key, head.api_version
        try:
            screened = access.screen(ent, key, version, frame, head.end, head.correlation_id)
        except access.AccessRefused as exc:
            self.gateway.deny(self, key, version, head.client_id, ())
            raise ClientRefused(str(exc)) from None
        if screened is None:
            return frame, None
        if screened.denied:
            self.gateway.deny(self, key, version, head.client_id, screened.denied)
        if screened.frame is None:
            if screened.answer is not None:
                await self._answer_locally(head.correlation_id, key, version, head.client_id, screened.answer)
            return None
        return screened.frame, screened.after

    async def _authenticate(self, frame: bytes, correlation_id: int, key: int, version: int, head: Any) -> bool:
        """GATEWAY_AUTH=streamtoll: answer SaslHandshake / SaslAuthenticate here (True: answered),
        refuse anything but ApiVersions before authentication (the connection closes)."""
        auth = self.auth
        assert auth is not None
        if key not in (protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE):
            if not auth.allows(key):
                raise ClientRefused(f"{protocol.api_name(key)} before authentication")
            if key == protocol.API_VERSIONS and not auth.authenticated and self.gateway.api_versions:
                answer = api_versions_answer(self.gateway.api_versions, version, correlation_id)
                await self._answer_locally(correlation_id, key, version, head.client_id, answer)
                return True
            return False
        body = protocol.request_body_offset(frame, key, version, head.end)
        request = protocol.decode_request(frame, key, version, body)
        answer, close = auth.answer(key, version, correlation_id, request)
        await self._answer_locally(correlation_id, key, version, head.client_id, answer)
        if close:
            raise ClientRefused(auth.refusal)
        if auth.credential is not None and self.identity.gateway_principal is None:
            self.identity.gateway_principal = auth.credential.principal
            log.info("client authenticated", extra={"conn": self.id, "principal": self.principal})
        return True

    async def _answer_locally(self, correlation_id: int, key: int, version: int, client_id: str, answer: bytes) -> None:
        """Send the gateway's own answer to a request in its turn (after the answers of the
        requests before it)."""
        if correlation_id in self.inflight:
            raise ProtocolViolation(f"correlation id {correlation_id} is already in flight")
        if self.inflight or self.answering:  # answers go back in request order
            self.inflight[correlation_id] = Pending(key, version, client_id, None, refusal=answer)
            self.idle.clear()
            return
        self.writer.write(len(answer).to_bytes(4, "big") + answer)
        await self.writer.drain()

    async def _refuse(
        self, frame: bytes, correlation_id: int, key: int, version: int, client_id: str, end: int
    ) -> None:
        """Answer a Produce or Fetch as a broker under pressure would (``protocol.refusal``),
        without forwarding it: nothing is written upstream, so nothing is metered. An ``acks=0``
        Produce expects no answer and gets none."""
        gw = self.gateway
        gw.refuse(key)
        request = None
        if key == protocol.PRODUCE:
            body = protocol.request_body_offset(frame, key, version, end)
            request = protocol.decode_request(frame, key, version, body)
            if request.acks == 0:
                return
        answer = protocol.refusal(key, version, correlation_id, request)
        await self._answer_locally(correlation_id, key, version, client_id, answer)

    def _answer_refusals(self) -> None:
        """Send the refusals that are next in line (every request before them is answered)."""
        while self.inflight:
            correlation_id, first = next(iter(self.inflight.items()))
            if first.refusal is None:
                return
            del self.inflight[correlation_id]
            if not self.client_gone:
                self.writer.write(len(first.refusal).to_bytes(4, "big") + first.refusal)

    async def _responses(self, upstream: asyncio.StreamReader) -> None:
        try:
            await self._answer(upstream)
        finally:  # the upstream connection ended: so does the client's
            if self.requests_task is not None:
                self.requests_task.cancel()

    async def _answer(self, upstream: asyncio.StreamReader) -> None:
        gw = self.gateway
        while True:
            try:
                frame = await _read_frame(upstream, 2**31 - 1)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            correlation_id = int.from_bytes(frame[:4], "big", signed=True)
            pending = self.inflight.pop(correlation_id, None)
            if pending is None:
                if self.unanswered.pop(correlation_id, 0) is None:
                    continue  # a response to an acks=0 produce: the client expects none
                log.error("upstream answered a request not in flight", extra={"conn": self.id, "id": correlation_id})
                return
            gw.latency.observe(pending.api_key, time.monotonic() - pending.sent)
            self.answering = True
            if pending.after is not None:
                frame = pending.after(frame)
            frame = gw.handle_response(self, pending, frame)
            frame = gw.quotas.answered(self, correlation_id, pending.api_key, pending.api_version, frame)
            if pending.api_key == protocol.PRODUCE and (durable := gw.audit.synced()) is not None:
                await durable  # GATEWAY_JOURNAL_FSYNC=always: its events are on disk before the answer
            self.answering = False
            if not self.client_gone:
                self.writer.write(len(frame).to_bytes(4, "big") + frame)
            self._answer_refusals()
            if not self.inflight:
                self.idle.set()
            if self.client_gone:
                continue
            try:
                await self.writer.drain()
            except ConnectionError:
                self.client_gone = True


class Gateway:
    """The listeners and their connections; :meth:`drain` stops it gracefully."""

    def __init__(
        self,
        settings: GatewaySettings,
        upstream: list[tuple[str, int]],
        audit: AuditSink,
        source: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.audit = audit
        self.source = source or f"//streamtoll-gateway/{socket.gethostname()}"
        self.virtual_cluster = settings.virtual_cluster
        self.clock = clock
        self.listener_tls = settings.tls.context() if settings.tls else None
        self.upstream_tls = settings.upstream_security.context()
        self.topology = Topology(settings, self._new_broker)
        self.servers: list[asyncio.Server] = []
        self.connections: set[Connection] = set()
        self.requests: Counter[int] = Counter()
        self.latency = LatencyHistogram()  # upstream latency by API key
        self.metered: Counter[str] = Counter()  # produce_records, produce_bytes, fetch_records, fetch_bytes
        self.violations = 0
        self.accepted = 0
        self.credentials: Any = None  # GATEWAY_AUTH=streamtoll: a gateway.credentials.CredentialStore
        # GATEWAY_AUTH=streamtoll: a gateway.control.EntitlementStore (grants, rates, caps per account)
        self.entitlements: Any = None
        self.api_versions: dict[int, tuple[int, int]] = {}  # the upstream's, for ApiVersions before authentication
        self.quotas = QuotaManager(lambda: self.entitlements)  # rate quotas and caps per account
        self.refused: Counter[int] = Counter()  # Produce / Fetch answered by the gateway: the audit journal was full
        self.denied: Counter[int] = Counter()  # requests the account's access denied (in part or whole), by API
        self._refusing_logged = 0.0
        self.serving = False
        self.heartbeat = time.monotonic()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()

    # -- metering -----------------------------------------------------------------------------

    def meter(self, kind: str, ctx: RequestContext, counted: list[Counted], **extra: Any) -> None:
        counted = [c for c in counted if c.bytes]  # a partition the request named without data
        if not counted:
            return
        direction = "produce" if kind == PRODUCE_TYPE else "fetch"
        for c in counted:
            self.metered[direction + "_records"] += c.records
            self.metered[direction + "_bytes"] += c.bytes
        self.audit.write(events(kind, self.source, ctx, counted, self.clock(), **extra))

    def credential_changed(self, credential: Any) -> None:
        """A credential stopped being active (revoked): close its open connections."""
        for conn in list(self.connections):
            if conn.credential_id == credential.id:
                conn.revoke()

    def deny(self, conn: Connection, key: int, version: int, client_id: str, denied: Any) -> None:
        """A request (or part of it) the account may not make: counted, and for Produce and Fetch
        written as denied audit events (never metered as usage)."""
        self.denied[key] += 1
        log.info(
            "request denied",
            extra={"conn": conn.id, "principal": conn.principal, "api": protocol.api_name(key), "denied": denied},
        )
        if key in (protocol.PRODUCE, protocol.FETCH) and denied and self.audit.accepting():
            kind = PRODUCE_TYPE if key == protocol.PRODUCE else CONSUME_TYPE
            ctx = RequestContext(conn.principal, client_id, conn.client_ip, self.virtual_cluster, version)
            self.audit.write(denied_events(kind, self.source, ctx, denied, self.clock()))

    def refuse(self, api_key: int) -> None:
        self.refused[api_key] += 1
        now = time.monotonic()
        if now - self._refusing_logged >= 5:
            self._refusing_logged = now
            log.error(
                "the audit journal is full: Produce and Fetch are refused until the audit topic takes its events "
                "(GATEWAY_JOURNAL_FULL=refuse)",
                extra={"refused": {protocol.api_name(k): n for k, n in self.refused.items()}},
            )

    def handle_response(self, conn: Connection, pending: Pending, frame: bytes) -> bytes:
        key, version = pending.api_key, pending.api_version
        if key in (protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE):
            observe_response(conn.identity, key, version, frame, conn.id)
            return frame
        if key == protocol.API_VERSIONS:
            capped = protocol.cap_api_versions(frame, version)
            return capped if conn.auth is None else advertise_sasl(capped, version)
        if protocol.rewrites(key):
            return protocol.rewrite_response(frame, key, version, self.topology.address)
        if key == protocol.PRODUCE:
            body = protocol.response_body_offset(frame, key, version)
            response = protocol.decode_response(frame, key, version, body)
            acked = acknowledged(response)
            produced = [c for c in pending.produced or () if (c.topic, c.partition) in acked]
            self.meter(PRODUCE_TYPE, conn._context(pending), produced, acks=pending.acks, acknowledged=True)
            rewritten = protocol.rewrite_body(key, version, response, self.topology.address)
            return frame if rewritten is None else frame[:body] + protocol.encode(rewritten)
        if key == protocol.FETCH:
            body = protocol.response_body_offset(frame, key, version)
            response = protocol.decode_response(frame, key, version, body)
            fetched = list(fetch_counts(response))
            self.meter(CONSUME_TYPE, conn._context(pending), fetched)
            self.quotas.consumed(conn, sum(c.bytes for c in fetched))
        return frame

    # -- listeners ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the upstream brokers and open the bootstrap listener and one per broker."""
        self._loop = asyncio.get_running_loop()
        brokers = await discover_brokers(self.upstream, self.settings.upstream_security, self.upstream_tls)
        if self.credentials is not None:
            try:
                self.api_versions = await upstream_api_versions(
                    self.upstream, self.settings.upstream_security, self.upstream_tls
                )
            except UpstreamError as exc:  # then ApiVersions before authentication is forwarded
                log.warning("the upstream's API versions are unknown", extra={"error": str(exc)})
        s = self.settings
        self.servers.append(await self._listen(s.listen_port, lambda: self.upstream))
        self.topology.on_new_broker = None  # the seeded brokers' listeners open here, in order
        self.topology.seed(brokers)
        for node_id, port in sorted(self.topology.port_of.items(), key=lambda kv: kv[1]):
            self.servers.append(await self._listen(port, self._broker_address(node_id)))
        self.topology.on_new_broker = self._new_broker
        self.serving = True
        self._beat = asyncio.create_task(self._heartbeat())
        log.info(
            "gateway listening",
            extra={
                "bootstrap": f"{s.listen_host}:{s.listen_port}",
                "brokers": {str(n): p for n, p in self.topology.port_of.items()},
                "advertised_host": s.advertised_host,
                "tls": "mutual" if s.tls and s.tls.client_ca else "on" if s.tls else "off",
                "upstream": s.upstream_security.protocol,
            },
        )

    async def _heartbeat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            self.quotas.sweep()
            await asyncio.sleep(1)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready while the listeners are open and the audit sink takes events (``journal`` says how
        many wait, for how long, and whether they are stuck)."""
        ready, info = self.serving, {"connections": len(self.connections), "brokers": len(self.topology.port_of)}
        audit_health = getattr(self.audit, "health", None)
        if audit_health is not None:
            accepting, extra = audit_health()
            ready = ready and accepting
            info.update(extra)
        return ready, info

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """Live while the event loop turns (a stuck loop is cured by a restart)."""
        stalled = time.monotonic() - self.heartbeat
        return stalled < 10, {"loop_stalled_s": round(stalled, 1)}

    def _broker_address(self, node_id: int) -> Callable[[], list[tuple[str, int]]]:
        return lambda: [self.topology.upstream[node_id]]

    def _new_broker(self, node_id: int, port: int) -> None:
        async def open_listener() -> None:
            try:
                self.servers.append(await self._listen(port, self._broker_address(node_id)))
            except OSError as exc:
                log.error("could not open a broker's gateway port", extra={"port": port, "error": str(exc)})

        if self._loop is not None and not self._stopped.is_set():
            self._loop.create_task(open_listener())

    async def _listen(self, port: int, upstream: Callable[[], list[tuple[str, int]]]) -> asyncio.Server:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            conn = Connection(self, next(self._ids), reader, writer, upstream())
            self.connections.add(conn)
            await conn.run()

        return await asyncio.start_server(
            accept, self.settings.listen_host, port, reuse_address=True, ssl=self.listener_tls
        )

    async def drain(self, timeout: float = INFLIGHT_GRACE) -> None:
        """Stop accepting, stop reading new requests, let requests in flight be answered (and
        metered), then close every connection."""
        self._stopped.set()
        self.serving = False
        for server in self.servers:
            server.close()
        conns = list(self.connections)
        for conn in conns:
            if conn.requests_task is not None:
                conn.requests_task.cancel()
        waits = [asyncio.create_task(c.idle.wait()) for c in conns]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
            for w in waits:
                w.cancel()
        deadline = asyncio.get_running_loop().time() + 5
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # each connection closes itself once its last response went out
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
