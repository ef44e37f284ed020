"""Who a client connection is: its principal, for the audit events' ``subject`` (and key).

In order of precedence (as Kafka's own principal builder):

1. **SASL passed through** (:class:`SaslExchange`): the client's SaslHandshake names the mechanism
   and its first SaslAuthenticate carries the name —

   * ``PLAIN``: ``[authzid] NUL authcid NUL password`` → ``User:<authcid>``;
   * ``SCRAM-SHA-256`` / ``-512``: the client-first message ``n,,n=<name>,r=<nonce>`` →
     ``User:<name>`` (``=2C`` and ``=3D`` unescaped to ``,`` and ``=``);
   * ``OAUTHBEARER``: the initial response ``n,,\\x01auth=Bearer <jwt>\\x01\\x01`` → ``User:`` and
     the JWT's ``sub`` claim. **The token's signature is not checked**: the broker checks it, and
     the name counts only once the broker accepted it (below).

   The name takes effect only when the broker accepted the exchange: a SaslAuthenticate response
   with error code 0 that ends it (PLAIN: the first; SCRAM: the second, carrying the server
   signature ``v=…``; OAUTHBEARER: the first, with no error challenge in it). A refused exchange
   leaves the principal as it was. A re-authentication (KIP-368) changes it once accepted. Other
   mechanisms (GSSAPI) and SCRAM delegation tokens (``tokenauth=true``) give no name the gateway
   can read: the principal stays the certificate's or ``User:ANONYMOUS`` (logged once).
2. **The client certificate**, where the gateway terminates TLS with ``GATEWAY_TLS_CLIENT_CA``:
   ``User:CN=…`` (:func:`gateway.security.cert_principal`).
3. ``User:ANONYMOUS``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field

import orjson

from gateway.security import UpstreamAuth

__all__ = [
    "ANONYMOUS",
    "ClientIdentity",
    "SaslExchange",
    "oauthbearer_subject",
    "plain_username",
    "sasl_principal",
    "scram_username",
]

log = logging.getLogger(__name__)

ANONYMOUS = "User:ANONYMOUS"


def plain_username(message: bytes) -> str | None:
    """The authcid of a SASL PLAIN message (RFC 4616)."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        return parts[1].decode()
    except UnicodeDecodeError:
        return None


def _gs2_split(message: str) -> tuple[str, str] | None:
    """(gs2 header incl. its two commas, the rest) of a GS2-framed message (RFC 5801)."""
    flag, sep, rest = message.partition(",")
    if not sep or (flag not in ("n", "y") and not flag.startswith("p=")):
        return None
    authzid, sep, rest = rest.partition(",")
    if not sep or (authzid and not authzid.startswith("a=")):
        return None
    return f"{flag},{authzid},", rest


def scram_username(client_first: bytes) -> str | None:
    """The user name of a SCRAM client-first message (RFC 5802), ``=2C``/``=3D`` unescaped;
    None if it is not one, or if it logs in with a delegation token (``tokenauth=true``)."""
    try:
        text = client_first.decode()
    except UnicodeDecodeError:
        return None
    split = _gs2_split(text)
    if split is None:
        return None
    attrs = split[1].split(",")
    if not attrs or not attrs[0].startswith("n=") or "tokenauth=true" in attrs[2:]:
        return None
    name = attrs[0][2:]
    if not name or any(part[:2] not in ("2C", "3D") for part in name.split("=")[1:]):
        return None  # an "=" that is not an escape
    return name.replace("=2C", ",").replace("=3D", "=")


def oauthbearer_subject(initial: bytes) -> str | None:
    """The ``sub`` claim of the JWT in an OAUTHBEARER initial client response (RFC 7628). The
    signature is not checked (the broker checks it)."""
    try:
        text = initial.decode()
    except UnicodeDecodeError:
        return None
    split = _gs2_split(text)
    if split is None or not split[1].startswith("\x01"):
        return None
    token = None
    for kv in split[1].split("\x01"):
        key, sep, value = kv.partition("=")
        if sep and key == "auth" and value[:7].lower() == "bearer ":
            token = value[7:].strip()
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) and sub else None


def sasl_principal(mechanism: str, first_message: bytes) -> str | None:
    """``User:<name>`` from a mechanism's first client message (None: no name to read)."""
    if mechanism == "PLAIN":
        name = plain_username(first_message)
    elif mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        name = scram_username(first_message)
    elif mechanism == "OAUTHBEARER":
        name = oauthbearer_subject(first_message)
    else:
        name = None
    return None if name is None else "User:" + name


@dataclass
class SaslExchange:
    """One SASL exchange the gateway passes through, as it goes: fed the client's SaslHandshake
    and SaslAuthenticate requests and the broker's responses, in order."""

    mechanism: str | None = None
    candidate: str | None = None  # the name the exchange claims; counts once the broker accepts
    sent: int = 0  # SaslAuthenticate requests in this exchange
    answered: int = 0  # ... answered with error code 0

    def _reset(self) -> None:
        self.mechanism, self.candidate, self.sent, self.answered = None, None, 0, 0

    def handshake(self, mechanism: str) -> None:
        self._reset()
        self.mechanism = mechanism.upper()

    def handshake_refused(self) -> None:
        self._reset()

    def authenticate(self, auth_bytes: bytes) -> None:
        self.sent += 1
        if self.sent == 1 and self.mechanism is not None:
            self.candidate = sasl_principal(self.mechanism, auth_bytes)

    def answered_with(self, error_code: int, auth_bytes: bytes) -> tuple[bool, str | None]:
        """(whether the exchange ended accepted, the principal it proved: None if unreadable)."""
        if error_code != 0:
            self._reset()
            return False, None
        self.answered += 1
        m = self.mechanism
        done = (
            (m == "PLAIN" and self.answered == 1)
            or (m in ("SCRAM-SHA-256", "SCRAM-SHA-512") and self.answered == 2 and auth_bytes.startswith(b"v="))
            or (m == "OAUTHBEARER" and self.answered == 1 and not auth_bytes)
            or (m not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER") and self.answered >= 1)
        )
        if not done:
            return False, None
        principal = self.candidate
        self._reset()
        return True, principal


@dataclass
class ClientIdentity:
    """A client connection's identity state. Today its upstream connection is authenticated by the
    client's own SASL passing through (:attr:`UpstreamAuth.PASS_THROUGH`); the next issue adds
    clients that authenticate to the gateway itself (:attr:`UpstreamAuth.GATEWAY`: the gateway
    answers their SASL and logs in upstream with its service identity) — :attr:`gateway_principal`
    is where that principal goes."""

    upstream_auth: UpstreamAuth = UpstreamAuth.PASS_THROUGH
    tls_principal: str | None = None
    sasl_principal: str | None = None
    gateway_principal: str | None = None  # next issue: authenticated by the gateway itself
    exchange: SaslExchange = field(default_factory=SaslExchange)
    _unreadable_logged: bool = False

    @property
    def principal(self) -> str:
        return self.gateway_principal or self.sasl_principal or self.tls_principal or ANONYMOUS

    def accepted(self, principal: str | None, conn_id: int) -> None:
        """The broker accepted a SASL exchange that proved ``principal``."""
        if principal is not None:
            self.sasl_principal = principal
            log.info("client authenticated", extra={"conn": conn_id, "principal": principal})
        elif not self._unreadable_logged:
            self._unreadable_logged = True
            log.warning(
                "client authenticated with a SASL exchange that names no user the gateway reads: metered as "
                + self.principal,
                extra={"conn": conn_id},
            )


def observe_request(identity: ClientIdentity, api_key: int, version: int, frame: bytes, header_end: int) -> None:
    """Feed a client's SaslHandshake or SaslAuthenticate request to its exchange."""
    from gateway import protocol

    if api_key not in (protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE):
        return
    body = protocol.request_body_offset(frame, api_key, version, header_end)
    request = protocol.decode_request(frame, api_key, version, body)
    if api_key == protocol.SASL_HANDSHAKE:
        identity.exchange.handshake(str(request.mechanism))
    else:
        identity.exchange.authenticate(bytes(request.auth_bytes))


def observe_response(identity: ClientIdentity, api_key: int, version: int, frame: bytes, conn_id: int) -> None:
    """Feed the broker's answer to a SaslHandshake or SaslAuthenticate; an accepted exchange sets
    the principal."""
    from gateway import protocol

    if api_key not in (protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE):
        return
    body = protocol.response_body_offset(frame, api_key, version)
    response = protocol.decode_response(frame, api_key, version, body)
    if api_key == protocol.SASL_HANDSHAKE:
        if response.error_code != 0:
            identity.exchange.handshake_refused()
        return
    done, principal = identity.exchange.answered_with(int(response.error_code), bytes(response.auth_bytes or b""))
    if done:
        identity.accepted(principal, conn_id)
