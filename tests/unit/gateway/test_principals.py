"""Principals from the SASL exchanges the gateway passes through, and from client certificates."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.principals import (
    ANONYMOUS,
    ClientIdentity,
    SaslExchange,
    oauthbearer_subject,
    plain_username,
    sasl_principal,
    scram_username,
)
from gateway.security import cert_principal, scram_client_final


def _jwt(claims: dict[str, object]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "RS256"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'not-checked')}"


def test_plain_gives_the_authcid() -> None:
    assert plain_username(b"\0alice\0s3cret") == "alice"
    assert plain_username(b"alice\0alice\0s3cret") == "alice"  # authzid equal to the user
    assert plain_username("\0jürgen\0pw".encode()) == "jürgen"
    assert plain_username(b"\0\0pw") is None
    assert plain_username(b"alice") is None
    assert plain_username(b"\0\xff\0pw") is None


def test_scram_client_first_gives_the_unescaped_name() -> None:
    assert scram_username(b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL") == "alice"
    assert scram_username(b"n,,n=a=2Cb=3Dc,r=nonce") == "a,b=c"  # RFC 5802: "," is =2C, "=" is =3D
    assert scram_username(b"y,,n=bob,r=nonce") == "bob"
    assert scram_username(b"n,a=bob,n=bob,r=nonce") == "bob"
    assert scram_username(b"n,,n=bob,r=nonce,tokenauth=true") is None  # delegation token: owner unknown
    assert scram_username(b"n,,n=a=4Ab,r=nonce") is None  # "=" that is no escape
    assert scram_username(b"n,,r=nonce") is None
    assert scram_username(b"x,,n=bob,r=nonce") is None
    assert scram_username(b"n=bob,r=nonce") is None


def test_oauthbearer_gives_the_tokens_sub_without_checking_the_signature() -> None:
    token = _jwt({"sub": "svc-orders", "exp": 1})
    assert oauthbearer_subject(f"n,,\x01auth=Bearer {token}\x01\x01".encode()) == "svc-orders"
    assert oauthbearer_subject(f"n,a=svc-orders,\x01host=k\x01auth=Bearer {token}\x01\x01".encode()) == "svc-orders"
    assert oauthbearer_subject(f"n,,\x01auth=bearer {token}\x01\x01".encode()) == "svc-orders"
    assert oauthbearer_subject(f"n,,\x01auth=Bearer {_jwt({'aud': 'x'})}\x01\x01".encode()) is None
    assert oauthbearer_subject(b"n,,\x01auth=Bearer not.a-jwt\x01\x01") is None
    assert oauthbearer_subject(f"n,,auth=Bearer {token}".encode()) is None
    assert oauthbearer_subject(b"\x01") is None


def test_principal_takes_effect_only_once_the_broker_accepted_the_exchange() -> None:
    ident = ClientIdentity(tls_principal="User:CN=app")
    assert ident.principal == "User:CN=app"

    # PLAIN, refused: nothing changes
    ex = ident.exchange
    ex.handshake("PLAIN")
    ex.authenticate(b"\0mallory\0wrong")
    assert ex.answered_with(58, b"") == (False, None)
    assert ident.principal == "User:CN=app"

    # SCRAM: the first answer (server-first, error 0) is not acceptance; the second (v=…) is
    ex.handshake("SCRAM-SHA-512")
    ex.authenticate(b"n,,n=alice,r=abc")
    assert ex.answered_with(0, b"r=abcdef,s=c2FsdA==,i=4096") == (False, None)
    ex.authenticate(b"c=biws,r=abcdef,p=cHJvb2Y=")
    done, who = ex.answered_with(0, b"v=c2lnbmF0dXJl")
    assert (done, who) == (True, "User:alice")
    ident.accepted(who, 1)
    assert ident.principal == "User:alice"  # SASL before the certificate, as Kafka

    # SCRAM refused at its second step: the accepted principal stays
    ex.handshake("SCRAM-SHA-256")
    ex.authenticate(b"n,,n=bob,r=x")
    assert ex.answered_with(0, b"r=xy,s=c2FsdA==,i=4096") == (False, None)
    ex.authenticate(b"c=biws,r=xy,p=bad")
    assert ex.answered_with(58, b"") == (False, None)
    assert ident.principal == "User:alice"

    # OAUTHBEARER: an error challenge (error 0 with a JSON status) is not acceptance
    ex.handshake("OAUTHBEARER")
    ex.authenticate(f"n,,\x01auth=Bearer {_jwt({'sub': 'svc'})}\x01\x01".encode())
    assert ex.answered_with(0, b'{"status":"invalid_token"}') == (False, None)
    ex.handshake("OAUTHBEARER")
    ex.authenticate(f"n,,\x01auth=Bearer {_jwt({'sub': 'svc'})}\x01\x01".encode())
    assert ex.answered_with(0, b"") == (True, "User:svc")

    assert ClientIdentity().principal == ANONYMOUS


def test_an_authenticate_without_handshake_names_nobody() -> None:
    ex = SaslExchange()
    ex.authenticate(b"\0alice\0pw")
    assert ex.candidate is None
    assert sasl_principal("GSSAPI", b"\x60\x82") is None


def test_client_certificate_subject_as_kafkas_default_principal_builder() -> None:
    cert = {
        "subject": (
            (("countryName", "DE"),),
            (("organizationName", "Example, Inc."),),
            (("organizationalUnitName", "eng"), ("userId", "7")),
            (("commonName", "alice"),),
        )
    }
    assert cert_principal(cert) == "User:CN=alice,OU=eng+UID=7,O=Example\\, Inc.,C=DE"
    assert cert_principal({}) is None
    assert cert_principal(None) is None


def test_scram_client_final_matches_rfc_7677() -> None:
    """RFC 7677 section 3's SCRAM-SHA-256 example (user "user", password "pencil")."""
    client_nonce = "rOprNGfwEbeRWgbNEkqO"
    server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final, server_signature = scram_client_final(
        "SCRAM-SHA-256", "pencil", f"n=user,r={client_nonce}", server_first, client_nonce
    )
    assert final == (
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.mark.parametrize("server_first", ["r=other,s=c2FsdA==,i=4096", "r=abcX,s=c2FsdA==", "garbage"])
def test_scram_refuses_a_server_first_message_that_is_not_valid(server_first: str) -> None:
    from gateway.errors import UpstreamError

    with pytest.raises(UpstreamError):
        scram_client_final("SCRAM-SHA-512", "pw", "n=u,r=abc", server_first, "abc")
