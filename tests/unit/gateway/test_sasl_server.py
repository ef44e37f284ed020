"""The gateway's own SASL server (GATEWAY_AUTH=streamtoll): SCRAM against RFC 7677's worked
example and the gateway's own SCRAM client, PLAIN, rotation overlaps, revocation, and the
Kafka rules for handshakes and requests before authentication (gateway.authn)."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from gateway import protocol
from gateway.authn import ClientAuth
from gateway.sasl_server import AuthenticationFailed, PlainServer, ScramServer
from gateway.security import scram_client_final
from metering.credentials import Credential, decode, encode, scram_key

NOW = datetime(2026, 12, 7, tzinfo=UTC)
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def _credential(username: str, *passwords: str, state: str = "active", salt: bytes | None = None) -> Credential:
    keys = []
    for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
        for password in passwords:
            keys.append(scram_key(mechanism, password, salt or b"s" * 32, 4096))
    return Credential("cred_1", username.split("/")[0], username, state, tuple(keys))


def _lookup(*credentials: Credential):  # type: ignore[no-untyped-def]
    by_name = {c.username: c for c in credentials}
    return by_name.get


def test_scram_server_answers_rfc_7677s_example() -> None:
    """RFC 7677 section 3 (user "user", password "pencil"), byte for byte from the server side."""
    cred = Credential("c", "x", "user", "active", (scram_key("SCRAM-SHA-256", "pencil", RFC_SALT, 4096),))
    server = ScramServer("SCRAM-SHA-256", _lookup(cred), lambda: NOW, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = server.step(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.done and server.credential is cred


def _exchange(server: ScramServer, mechanism: str, user: str, password: str) -> bytes:
    nonce = "clientnonce123"
    bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
    server_first = server.step(("n,," + bare).encode()).decode()
    final, expected = scram_client_final(mechanism, password, bare, server_first, nonce)
    answer = server.step(final.encode())
    assert answer == b"v=" + base64.b64encode(expected)
    return answer


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
def test_scram_server_and_client_agree_and_a_wrong_password_fails(mechanism: str) -> None:
    cred = _credential("acme/orders-svc", "right")
    _exchange(ScramServer(mechanism, _lookup(cred), lambda: NOW), mechanism, "acme/orders-svc", "right")
    with pytest.raises(AuthenticationFailed):
        _exchange(ScramServer(mechanism, _lookup(cred), lambda: NOW), mechanism, "acme/orders-svc", "wrong")
    with pytest.raises(AuthenticationFailed):  # unknown user: refused at the first message
        ScramServer(mechanism, _lookup(cred), lambda: NOW).step(b"n,,n=nobody,r=abc")


def test_a_revoked_credential_and_an_expired_password_fail_and_a_rotation_overlap_takes_both() -> None:
    old = _credential("acme/svc", "old")
    new = scram_key("SCRAM-SHA-512", "new", b"s" * 32, 4096)
    rotated = dataclasses.replace(
        old,
        keys=(dataclasses.replace(old.keys[0], valid_until=NOW + timedelta(hours=1)), new),
    )
    for password in ("old", "new"):
        _exchange(ScramServer("SCRAM-SHA-512", _lookup(rotated), lambda: NOW), "SCRAM-SHA-512", "acme/svc", password)
    later = NOW + timedelta(hours=2)
    with pytest.raises(AuthenticationFailed):
        _exchange(ScramServer("SCRAM-SHA-512", _lookup(rotated), lambda: later), "SCRAM-SHA-512", "acme/svc", "old")
    _exchange(ScramServer("SCRAM-SHA-512", _lookup(rotated), lambda: later), "SCRAM-SHA-512", "acme/svc", "new")
    revoked = dataclasses.replace(rotated, state="revoked")
    with pytest.raises(AuthenticationFailed):
        _exchange(ScramServer("SCRAM-SHA-512", _lookup(revoked), lambda: NOW), "SCRAM-SHA-512", "acme/svc", "new")


def test_a_published_record_round_trips_and_holds_no_password() -> None:
    cred = _credential("acme/svc", "sekrit-password")
    assert decode(encode(cred)) == cred
    assert b"sekrit-password" not in encode(cred)


def test_scram_refuses_channel_binding_and_a_changed_nonce() -> None:
    cred = _credential("acme/svc", "pw")
    with pytest.raises(AuthenticationFailed):
        ScramServer("SCRAM-SHA-512", _lookup(cred), lambda: NOW).step(b"p=tls-unique,,n=acme/svc,r=abc")
    server = ScramServer("SCRAM-SHA-512", _lookup(cred), lambda: NOW)
    server.step(b"n,,n=acme/svc,r=abc")
    with pytest.raises(AuthenticationFailed):
        server.step(b"c=biws,r=abcOTHER,p=AAAA")


def test_plain_checks_the_password_against_the_scram_keys() -> None:
    cred = _credential("acme/svc", "pw")
    assert PlainServer(_lookup(cred), lambda: NOW).step(b"\0acme/svc\0pw") == b""
    with pytest.raises(AuthenticationFailed):
        PlainServer(_lookup(cred), lambda: NOW).step(b"\0acme/svc\0nope")


def _handshake(auth: ClientAuth, mechanism: str) -> tuple[int, bool]:
    frame, close = auth.answer(protocol.SASL_HANDSHAKE, 1, 7, SaslHandshakeRequest(mechanism=mechanism))
    body = protocol.decode_response(frame, protocol.SASL_HANDSHAKE, 1, 4)
    return int(body.error_code), close


def _authenticate(auth: ClientAuth, data: bytes) -> tuple[int, bytes, bool]:
    frame, close = auth.answer(protocol.SASL_AUTHENTICATE, 2, 8, SaslAuthenticateRequest(auth_bytes=data))
    body = protocol.decode_response(frame, protocol.SASL_AUTHENTICATE, 2, 5)
    return int(body.error_code), bytes(body.auth_bytes), close


def test_client_auth_follows_kafkas_rules() -> None:
    cred = _credential("acme/svc", "pw")
    auth = ClientAuth(_lookup(cred), tls=False, now=lambda: NOW)
    assert auth.allows(protocol.API_VERSIONS) and auth.allows(protocol.SASL_HANDSHAKE)
    assert not auth.allows(protocol.METADATA) and not auth.allows(protocol.PRODUCE)
    assert _handshake(auth, "PLAIN") == (33, True)  # PLAIN only over TLS: not offered here
    auth = ClientAuth(_lookup(cred), tls=False, now=lambda: NOW)
    assert _authenticate(auth, b"n,,n=acme/svc,r=x")[0] == 34  # no handshake before it
    auth = ClientAuth(_lookup(cred), tls=False, now=lambda: NOW)
    assert _handshake(auth, "SCRAM-SHA-256") == (0, False)
    nonce = "n0nce"
    code, server_first, close = _authenticate(auth, f"n,,n=acme/svc,r={nonce}".encode())
    assert (code, close) == (0, False)
    final, _ = scram_client_final("SCRAM-SHA-256", "pw", f"n=acme/svc,r={nonce}", server_first.decode(), nonce)
    code, server_final, close = _authenticate(auth, final.encode())
    assert (code, close) == (0, False) and server_final.startswith(b"v=")
    assert auth.authenticated and auth.credential is cred and auth.allows(protocol.PRODUCE)
    assert _handshake(auth, "SCRAM-SHA-256") == (34, True)  # a second handshake


def test_client_auth_refuses_a_wrong_password_with_sasl_authentication_failed() -> None:
    cred = _credential("acme/svc", "pw")
    auth = ClientAuth(_lookup(cred), tls=True, now=lambda: NOW)
    assert _handshake(auth, "PLAIN") == (0, False)
    code, _, close = _authenticate(auth, b"\0acme/svc\0wrong")
    assert (code, close) == (58, True) and not auth.authenticated


def test_apiversions_advertises_the_sasl_apis_the_gateway_answers_itself() -> None:
    """Under GATEWAY_AUTH=streamtoll the gateway answers SASL whatever the broker behind it offers."""
    from kio.schema.api_versions.v3.response import ApiVersion, ApiVersionsResponse
    from kio.schema.errors import ErrorCode
    from kio.static.primitive import i16, i64

    from gateway.authn import advertise_sasl

    body = ApiVersionsResponse(
        error_code=ErrorCode.none,
        api_keys=(ApiVersion(api_key=i16(0), min_version=i16(3), max_version=i16(9)),),
        throttle_time=timedelta(0),
        supported_features=(),
        finalized_features_epoch=i64(-1),
        finalized_features=(),
        zk_migration_ready=False,
    )
    frame = (5).to_bytes(4, "big") + protocol.encode(body)
    out = protocol.decode_response(advertise_sasl(frame, 3), protocol.API_VERSIONS, 3, 4)
    spans = {int(k.api_key): (int(k.min_version), int(k.max_version)) for k in out.api_keys}
    assert spans[0] == (3, 9)
    assert spans[protocol.SASL_HANDSHAKE] == protocol.SUPPORTED[protocol.SASL_HANDSHAKE]
    assert spans[protocol.SASL_AUTHENTICATE] == protocol.SUPPORTED[protocol.SASL_AUTHENTICATE]


def test_gateway_auth_setting() -> None:
    from gateway.errors import GatewaySettingsError
    from gateway.settings import GatewaySettings

    assert GatewaySettings.from_env({}).auth == "passthrough"  # nothing existing changes
    assert GatewaySettings.from_env({"STREAMTOLL_GATEWAY_AUTH": "StreamToll"}).auth == "streamtoll"
    with pytest.raises(GatewaySettingsError, match="GATEWAY_AUTH='ldap' must be passthrough or streamtoll"):
        GatewaySettings.from_env({"STREAMTOLL_GATEWAY_AUTH": "ldap"})


@pytest.mark.parametrize("version", range(protocol.SUPPORTED[protocol.API_VERSIONS][1] + 1))
def test_the_gateways_own_apiversions_answer_caps_the_upstreams_and_adds_sasl(version: int) -> None:
    from gateway.authn import api_versions_answer

    upstream = {protocol.PRODUCE: (0, 11), protocol.FETCH: (0, 17), 27: (0, 1)}  # 27: broker-internal
    frame = api_versions_answer(upstream, version, 42)
    assert int.from_bytes(frame[:4], "big") == 42
    body = protocol.decode_response(frame, protocol.API_VERSIONS, version, 4)
    spans = {int(k.api_key): (int(k.min_version), int(k.max_version)) for k in body.api_keys}
    assert spans[protocol.PRODUCE] == (max(0, protocol.SUPPORTED[protocol.PRODUCE][0]), 11)
    assert spans[protocol.FETCH][1] == min(17, protocol.SUPPORTED[protocol.FETCH][1])
    assert 27 not in spans and protocol.SASL_HANDSHAKE in spans and protocol.SASL_AUTHENTICATE in spans
