"""TLS on the client listeners, TLS and SASL toward the upstream cluster, and the settings that
choose them (read by :meth:`gateway.settings.GatewaySettings.from_env`).

**Client side.** ``GATEWAY_TLS_CERT`` and ``GATEWAY_TLS_KEY`` (PEM) put TLS (1.2 or newer) on the
bootstrap port and every broker port; with ``GATEWAY_TLS_CLIENT_CA`` a client must present a
certificate that CA signed, and its subject becomes the connection's principal
(:func:`cert_principal`). *Secure by default*: a ``GATEWAY_LISTEN`` host that is not a loopback
address (``127.0.0.0/8``, ``::1``, ``localhost``) without TLS is a start-up error, unless
``GATEWAY_ALLOW_PLAINTEXT=true`` says plaintext is meant (a private network, a TLS-terminating
load balancer in front) — clients' SASL passwords and records would otherwise cross the network
in the clear.

**Upstream side.** ``GATEWAY_UPSTREAM_SECURITY_PROTOCOL`` (``PLAINTEXT``, ``SSL``,
``SASL_PLAINTEXT``, ``SASL_SSL``) and the ``GATEWAY_UPSTREAM_SSL_*`` / ``GATEWAY_UPSTREAM_SASL_*``
settings mirror the ``KAFKA_*`` ones; while ``GATEWAY_UPSTREAM_BOOTSTRAP`` is unset (the cluster
behind the gateway is ``KAFKA_BOOTSTRAP``), each of them that is unset takes its ``KAFKA_*`` value.
TLS toward the brokers uses ``ssl`` with the CA bundle (the system's when unset) and, for mTLS, a
client certificate; host names are checked.

SASL toward the brokers has two models (:class:`UpstreamAuth`): the client's own SASL exchange
passes through the gateway to the broker (:attr:`UpstreamAuth.PASS_THROUGH`, the model of every
client connection today: the gateway never adds credentials of its own to a client's
connection), and the gateway authenticates itself with its service identity
(``GATEWAY_UPSTREAM_SASL_*``, PLAIN or SCRAM: :func:`authenticate`) — today only on its own
connections (the Metadata request that learns the brokers); the next issue, where the gateway
authenticates clients itself, uses it for client connections too (:attr:`UpstreamAuth.GATEWAY`).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import io
import ipaddress
import os
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v1.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i16, i32

from gateway.errors import UpstreamError

__all__ = [
    "PROTOCOLS",
    "SASL_MECHANISMS",
    "ListenerTLS",
    "UpstreamAuth",
    "UpstreamSecurity",
    "authenticate",
    "cert_principal",
    "is_loopback",
    "parse_security",
    "scram_client_final",
]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # the gateway's own identity
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36


class UpstreamAuth(enum.Enum):
    """Who authenticates a client connection's upstream connection."""

    PASS_THROUGH = "pass-through"  # the client's SaslHandshake/SaslAuthenticate go to the broker
    GATEWAY = "gateway"  # the gateway's service identity (next issue: clients authenticate to the gateway)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ListenerTLS:
    cert: str
    key: str
    client_ca: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            ctx.load_verify_locations(cafile=self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True)
class UpstreamSecurity:
    protocol: str = "PLAINTEXT"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def context(self) -> ssl.SSLContext | None:
        """The client TLS context toward the brokers (None: plaintext)."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def __repr__(self) -> str:  # never the password
        return f"UpstreamSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r})"


def _pem_problem(name: str, path: str, load: Callable[[], Any]) -> str | None:
    if not os.path.isfile(path):
        return f"{name}={path!r} is not a file"
    try:
        load()
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"{name}={path!r} does not load ({exc.args[-1] if exc.args else exc})"
    return None


def parse_security(
    get: Callable[[str], str | None], listen_host: str, upstream_bootstrap_set: bool, prefix: str
) -> tuple[dict[str, object], list[str]]:
    """The security fields of :class:`~gateway.settings.GatewaySettings` and the problems found
    (one sentence each, naming the setting). ``get(name)`` reads ``prefix + name``."""
    values: dict[str, object] = {}
    problems: list[str] = []
    p = prefix

    # -- client listeners
    cert, key, client_ca = get("GATEWAY_TLS_CERT"), get("GATEWAY_TLS_KEY"), get("GATEWAY_TLS_CLIENT_CA")
    allow = get("GATEWAY_ALLOW_PLAINTEXT")
    if allow is not None:
        if allow.lower() not in ("true", "false"):
            problems.append(f"{p}GATEWAY_ALLOW_PLAINTEXT={allow!r} must be true or false")
        values["allow_plaintext"] = allow.lower() == "true"
    if cert is None and key is None:
        if client_ca is not None:
            problems.append(f"{p}GATEWAY_TLS_CLIENT_CA needs {p}GATEWAY_TLS_CERT and {p}GATEWAY_TLS_KEY (client TLS)")
        elif not is_loopback(listen_host) and not values.get("allow_plaintext"):
            problems.append(
                f"{p}GATEWAY_LISTEN listens on {listen_host}, not a loopback address, without TLS: set "
                f"{p}GATEWAY_TLS_CERT and {p}GATEWAY_TLS_KEY, or {p}GATEWAY_ALLOW_PLAINTEXT=true if plaintext "
                "is meant (a private network, TLS ended in front of the gateway)"
            )
    elif cert is None or key is None:
        problems.append(f"{p}GATEWAY_TLS_CERT and {p}GATEWAY_TLS_KEY must be set together")
    else:
        tls = ListenerTLS(cert, key, client_ca)
        found = [
            _pem_problem(f"{p}GATEWAY_TLS_CERT", cert, lambda: None),
            _pem_problem(f"{p}GATEWAY_TLS_KEY", key, lambda: None),
        ]
        if client_ca is not None:
            found.append(
                _pem_problem(
                    f"{p}GATEWAY_TLS_CLIENT_CA",
                    client_ca,
                    lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=client_ca),
                )
            )
        found = [f for f in found if f]
        problems += [f for f in found if f]
        if not found:
            try:
                ListenerTLS(cert, key).context()
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(
                    f"{p}GATEWAY_TLS_CERT={cert!r} and {p}GATEWAY_TLS_KEY={key!r} do not load as a certificate "
                    f"and its key ({exc.args[-1] if exc.args else exc})"
                )
        values["tls"] = tls

    # -- upstream: GATEWAY_UPSTREAM_<X>, else (same cluster as KAFKA_BOOTSTRAP) KAFKA_<X>; a KAFKA_<X>
    # the upstream protocol has no use for is ignored, as librdkafka ignores it
    def up(name: str) -> tuple[str, str | None]:
        v = get("GATEWAY_UPSTREAM_" + name)
        if v is None and not upstream_bootstrap_set and (v := get("KAFKA_" + name)) is not None:
            return f"{p}KAFKA_{name} (the upstream's while {p}GATEWAY_UPSTREAM_BOOTSTRAP is unset)", v
        return f"{p}GATEWAY_UPSTREAM_{name}", v

    n_proto, protocol = up("SECURITY_PROTOCOL")
    n_mech, mechanism = up("SASL_MECHANISM")
    n_user, username = up("SASL_USERNAME")
    n_pass, password = up("SASL_PASSWORD")
    n_ca, ca = up("SSL_CA_LOCATION")
    n_cert, ucert = up("SSL_CERTIFICATE_LOCATION")
    n_key, ukey = up("SSL_KEY_LOCATION")
    protocol = (protocol or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        problems.append(f"{n_proto}={protocol!r} must be one of {', '.join(PROTOCOLS)}")
        return values, problems
    up_problems: list[str] = []
    if protocol.startswith("SASL_"):
        mech = (mechanism or "").upper()
        if mech not in SASL_MECHANISMS:
            up_problems.append(
                f"{n_mech}={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)} when the upstream protocol "
                f"is {protocol} (the gateway authenticates its own requests with it)"
            )
        if not username or not password:
            up_problems.append(f"{n_user} and {n_pass} must be set when the upstream protocol is {protocol}")
        mechanism = mech
    else:
        for name, v in ((n_mech, mechanism), (n_user, username), (n_pass, password)):
            if v is not None and name.startswith(p + "GATEWAY_"):
                up_problems.append(f"{name} is set but the upstream protocol is {protocol}, which has no SASL")
        mechanism = username = password = None
    if protocol.endswith("SSL"):
        if (ucert is None) != (ukey is None):
            up_problems.append(f"{n_cert} and {n_key} must be set together")
        for name, path in ((n_ca, ca), (n_cert, ucert), (n_key, ukey)):
            if path is not None and (problem := _pem_problem(name, path, lambda: None)):
                up_problems.append(problem)
        if not up_problems and (ca or ucert):
            try:
                UpstreamSecurity(protocol, ca, ucert, ukey).context()
            except (ssl.SSLError, OSError, ValueError) as exc:
                names = " and ".join(n for n, v in ((n_ca, ca), (n_cert, ucert), (n_key, ukey)) if v)
                up_problems.append(f"{names} do not load ({exc.args[-1] if exc.args else exc})")
    else:
        for name, v in ((n_ca, ca), (n_cert, ucert), (n_key, ukey)):
            if v is not None and name.startswith(p + "GATEWAY_"):
                up_problems.append(f"{name} is set but the upstream protocol is {protocol}, which has no TLS")
        ca = ucert = ukey = None
    problems += up_problems
    if not up_problems:
        values["upstream_security"] = UpstreamSecurity(protocol, ca, ucert, ukey, mechanism, username, password)
    return values, problems


def cert_principal(peercert: dict[str, Any] | None) -> str | None:
    """``User:<subject>`` of a verified client certificate, the subject written as Kafka's default
    principal builder writes it (RFC 2253: the last RDN first, ``CN=alice,OU=eng,O=Example``).
    Attributes other than the usual ones keep Python's name (Kafka writes ``OID=#hex``)."""
    if not peercert or not peercert.get("subject"):
        return None
    rdns = []
    for rdn in reversed(peercert["subject"]):
        rdns.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return "User:" + ",".join(rdns)


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


# -- the gateway's own SASL (PLAIN, SCRAM) ------------------------------------------------------


def _hash(mechanism: str) -> str:
    return "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def scram_client_final(
    mechanism: str, password: str, client_first_bare: str, server_first: str, client_nonce: str
) -> tuple[str, bytes]:
    """(client-final message, the server signature the server-final must carry) of a SCRAM
    exchange (RFC 5802) whose first messages were ``client_first_bare`` and ``server_first``."""
    attrs = dict(part.split("=", 1) for part in server_first.split(",") if "=" in part)
    nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
    if not nonce.startswith(client_nonce) or not salt or not iterations.isdigit():
        raise UpstreamError(f"the upstream's SCRAM server-first message is not valid ({server_first[:80]!r})")
    h = _hash(mechanism)
    salted = hashlib.pbkdf2_hmac(h, password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", h).digest()
    stored_key = hashlib.new(h, client_key).digest()
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, h).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", h).digest()
    server_signature = hmac.new(server_key, auth_message, h).digest()
    return f"{without_proof},p={base64.b64encode(proof).decode()}", server_signature


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: int, cid: int, body: Any) -> Any:
    header = RequestHeaderV1(
        request_api_key=i16(key), request_api_version=i16(1), correlation_id=i32(cid), client_id="streamtoll-gateway"
    )
    buf = io.BytesIO()
    entity_writer(RequestHeaderV1)(buf, header)
    entity_writer(type(body))(buf, body)
    writer.write(len(buf.getvalue()).to_bytes(4, "big") + buf.getvalue())
    await writer.drain()
    size = int.from_bytes(await reader.readexactly(4), "big", signed=True)
    if not 4 <= size <= 1 << 20:
        raise UpstreamError(f"the upstream answered a SASL request with a frame of {size} bytes")
    frame = await reader.readexactly(size)
    kind = SaslHandshakeResponse if key == SASL_HANDSHAKE else SaslAuthenticateResponse
    value, _ = entity_reader(kind)(frame, 4)
    return value


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, security: UpstreamSecurity) -> None:
    """Authenticate a fresh upstream connection with the gateway's own identity
    (SaslHandshake v1, then SaslAuthenticate v1); :class:`UpstreamError` if the broker refuses."""
    mechanism, user, password = security.sasl_mechanism or "", security.sasl_username or "", security.sasl_password
    hs = await _call(reader, writer, SASL_HANDSHAKE, 1, SaslHandshakeRequest(mechanism=mechanism))
    if hs.error_code != 0:
        raise UpstreamError(
            f"the upstream does not take SASL {mechanism} (error {int(hs.error_code)}; it offers "
            f"{', '.join(hs.mechanisms)})"
        )

    async def step(cid: int, data: bytes) -> bytes:
        resp = await _call(reader, writer, SASL_AUTHENTICATE, cid, SaslAuthenticateRequest(auth_bytes=data))
        if resp.error_code != 0:
            raise UpstreamError(
                f"the upstream refused the gateway's SASL {mechanism} login as {user!r}: {resp.error_message}"
            )
        return bytes(resp.auth_bytes)

    if mechanism == "PLAIN":
        await step(2, b"\0" + user.encode() + b"\0" + (password or "").encode())
        return
    nonce = secrets.token_urlsafe(24)
    first_bare = f"n={_saslname(user)},r={nonce}"
    server_first = (await step(2, ("n,," + first_bare).encode())).decode(errors="replace")
    final, expected = scram_client_final(mechanism, password or "", first_bare, server_first, nonce)
    server_final = (await step(3, final.encode())).decode(errors="replace")
    if not hmac.compare_digest(server_final.strip(), "v=" + base64.b64encode(expected).decode()):
        raise UpstreamError("the upstream's SCRAM server signature does not verify: not the broker we expect")
