"""Clients authenticating to the gateway itself (``GATEWAY_AUTH=streamtoll``): one
:class:`ClientAuth` per client connection answers its SaslHandshake and SaslAuthenticate
requests (never forwarded) with :mod:`gateway.sasl_server`, and says which requests it may send.

As a Kafka broker with a SASL listener does:

* before authentication only ApiVersions and SaslHandshake (then SaslAuthenticate) are taken;
  any other request closes the connection;
* a SaslHandshake for a mechanism not offered is answered ``UNSUPPORTED_SASL_MECHANISM`` (33) with
  the mechanisms offered, then the connection closes;
* a failed SaslAuthenticate is answered ``SASL_AUTHENTICATION_FAILED`` (58) with a sentence, then
  the connection closes;
* a SaslHandshake on an authenticated connection (the gateway does not re-authenticate, KIP-368),
  or a SaslAuthenticate without a handshake, is answered ``ILLEGAL_SASL_STATE`` (34), then the
  connection closes.

Offered: SCRAM-SHA-512 and SCRAM-SHA-256; PLAIN too on a TLS listener (its password would
otherwise cross the network in the clear).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.primitive import i16

from gateway import protocol
from gateway.sasl_server import AuthenticationFailed, SaslServer, server_for
from metering.credentials import MECHANISMS, Credential

__all__ = ["ClientAuth"]

UNAUTHENTICATED_ALLOWED = (protocol.API_VERSIONS, protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE)


def _response(api_key: int, version: int, correlation_id: int, **values: Any) -> bytes:
    cls = protocol._response_type(api_key, version)
    names = {f for f in cls.__dataclass_fields__}
    body = cls(**{k: v for k, v in values.items() if k in names})
    head = correlation_id.to_bytes(4, "big", signed=True) + (b"\x00" if cls.__flexible__ else b"")
    return head + protocol.encode(body)


def advertise_sasl(frame: bytes, version: int) -> bytes:
    """An ApiVersions response frame (already capped) that lists SaslHandshake and SaslAuthenticate
    with the versions the gateway answers itself, whatever the broker behind it offers."""
    import dataclasses

    if len(frame) >= 6 and int.from_bytes(frame[4:6], "big", signed=True) != 0:
        return frame  # an error answer (an unknown ApiVersions version): the client asks again
    resp = protocol.decode_response(frame, protocol.API_VERSIONS, version, 4)
    ours = {k: protocol.SUPPORTED[k] for k in (protocol.SASL_HANDSHAKE, protocol.SASL_AUTHENTICATE)}
    template = type(resp.api_keys[0]) if resp.api_keys else None
    if template is None:
        return frame
    keys = [k for k in resp.api_keys if int(k.api_key) not in ours]
    keys += [template(api_key=i16(k), min_version=i16(lo), max_version=i16(hi)) for k, (lo, hi) in ours.items()]
    keys.sort(key=lambda k: int(k.api_key))
    return frame[:4] + protocol.encode(dataclasses.replace(resp, api_keys=tuple(keys)))


def api_versions_answer(spans: dict[int, tuple[int, int]], version: int, correlation_id: int) -> bytes:
    """The gateway's own ApiVersions response frame (correlation id first) in ``version``: the
    upstream's ranges (``spans``, learnt at start) capped to :data:`protocol.SUPPORTED`, and the
    SASL APIs the gateway answers. Sent before authentication, so an unauthenticated client
    never makes the gateway open a connection to a broker."""
    import datetime
    import sys

    from kio.static.primitive import i32Timedelta

    cls = protocol._response_type(protocol.API_VERSIONS, version)
    entry = sys.modules[cls.__module__].ApiVersion
    keys = []
    for key, (low, high) in sorted(spans.items()):
        if (span := protocol.SUPPORTED.get(key)) is None:
            continue
        lo, hi = max(low, span[0]), min(high, span[1])
        if lo <= hi:
            keys.append(entry(api_key=i16(key), min_version=i16(lo), max_version=i16(hi)))
    names = set(cls.__dataclass_fields__)
    values = {
        "error_code": ErrorCode.none,
        "api_keys": tuple(keys),
        "throttle_time": i32Timedelta.parse(datetime.timedelta(0)),
    }
    body = cls(**{k: v for k, v in values.items() if k in names})
    frame = correlation_id.to_bytes(4, "big", signed=True) + protocol.encode(body)  # response header v0 always
    return advertise_sasl(frame, version)


class ClientAuth:
    def __init__(
        self,
        lookup: Callable[[str], Credential | None],
        tls: bool,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.lookup = lookup
        self.now = now
        self.mechanisms = (*MECHANISMS, "PLAIN") if tls else MECHANISMS
        self.server: SaslServer | None = None
        self.credential: Credential | None = None
        self.refusal = ""  # why the connection closes after the answer just given

    @property
    def authenticated(self) -> bool:
        return self.credential is not None

    def allows(self, api_key: int) -> bool:
        return self.authenticated or api_key in UNAUTHENTICATED_ALLOWED

    def answer(self, api_key: int, version: int, correlation_id: int, request: Any) -> tuple[bytes, bool]:
        """(the response frame, whether the connection closes once it is sent) for a
        SaslHandshake or SaslAuthenticate request."""
        self.refusal = ""
        if api_key == protocol.SASL_HANDSHAKE:
            mechanism = str(request.mechanism)
            if self.authenticated or self.server is not None:
                self.refusal = "a second SaslHandshake on this connection"
                return self._handshake(version, correlation_id, ErrorCode.illegal_sasl_state), True
            if mechanism not in self.mechanisms:
                self.refusal = f"SaslHandshake for {mechanism[:40]!r}, a mechanism not offered"
                return self._handshake(version, correlation_id, ErrorCode.unsupported_sasl_mechanism), True
            self.server = server_for(mechanism, self.lookup, self.now)
            return self._handshake(version, correlation_id, ErrorCode.none), False
        if self.server is None or self.authenticated:
            self.refusal = "SaslAuthenticate without a SaslHandshake before it"
            return self._authenticate(version, correlation_id, ErrorCode.illegal_sasl_state, self.refusal), True
        try:
            data = self.server.step(bytes(request.auth_bytes))
        except AuthenticationFailed as exc:
            self.refusal = str(exc)
            return self._authenticate(version, correlation_id, ErrorCode.sasl_authentication_failed, str(exc)), True
        if self.server.done:
            self.credential = self.server.credential
        return self._authenticate(version, correlation_id, ErrorCode.none, None, data), False

    def _handshake(self, version: int, correlation_id: int, error: ErrorCode) -> bytes:
        return _response(
            protocol.SASL_HANDSHAKE, version, correlation_id, error_code=error, mechanisms=tuple(self.mechanisms)
        )

    def _authenticate(
        self, version: int, correlation_id: int, error: ErrorCode, message: str | None, data: bytes = b""
    ) -> bytes:
        return _response(
            protocol.SASL_AUTHENTICATE,
            version,
            correlation_id,
            error_code=error,
            error_message=message,
            auth_bytes=data,
        )
