"""The gateway's TLS and upstream security settings: secure by default, strict, one sentence per
problem naming its setting."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from gateway.errors import GatewaySettingsError
from gateway.settings import GatewaySettings
from tests.tls import CertAuthority, make_ca

P = "STREAMTOLL_"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(tmp_path_factory.mktemp("ca"))


def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(GatewaySettingsError) as err:
        GatewaySettings.from_env(env)
    return err.value.problems


def test_plaintext_off_loopback_is_refused_unless_allowed(ca: CertAuthority) -> None:
    wide = {f"{P}GATEWAY_LISTEN": "0.0.0.0:19092", f"{P}GATEWAY_ADVERTISED_HOST": "gw.example.com"}
    (problem,) = _problems(wide)
    assert "not a loopback address, without TLS" in problem and "GATEWAY_ALLOW_PLAINTEXT=true" in problem
    assert _problems({f"{P}GATEWAY_LISTEN": "10.1.2.3:19092"})
    assert GatewaySettings.from_env({**wide, f"{P}GATEWAY_ALLOW_PLAINTEXT": "true"}).tls is None
    tls = {**wide, f"{P}GATEWAY_TLS_CERT": str(ca.server_cert), f"{P}GATEWAY_TLS_KEY": str(ca.server_key)}
    s = GatewaySettings.from_env(tls)
    assert s.tls is not None and s.tls.client_ca is None
    assert s.tls.context().verify_mode == ssl.CERT_NONE
    # loopback needs nothing: the default, and other loopback names
    for listen in ("127.0.0.1:19092", "[::1]:19092", "localhost:19092", "127.0.0.2:19092"):
        assert GatewaySettings.from_env({f"{P}GATEWAY_LISTEN": listen}).tls is None


def test_a_client_ca_requires_client_certificates(ca: CertAuthority) -> None:
    s = GatewaySettings.from_env(
        {
            f"{P}GATEWAY_TLS_CERT": str(ca.server_cert),
            f"{P}GATEWAY_TLS_KEY": str(ca.server_key),
            f"{P}GATEWAY_TLS_CLIENT_CA": str(ca.ca),
        }
    )
    assert s.tls is not None and s.tls.context().verify_mode == ssl.CERT_REQUIRED


def test_tls_files_must_exist_and_load(ca: CertAuthority, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    missing = str(tmp_path / "missing.pem")
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({f"{P}GATEWAY_TLS_CERT": str(ca.server_cert)}, ["GATEWAY_TLS_CERT and STREAMTOLL_GATEWAY_TLS_KEY"]),
        ({f"{P}GATEWAY_TLS_CLIENT_CA": str(ca.ca)}, ["GATEWAY_TLS_CLIENT_CA needs"]),
        (
            {f"{P}GATEWAY_TLS_CERT": missing, f"{P}GATEWAY_TLS_KEY": str(ca.server_key)},
            ["GATEWAY_TLS_CERT='" + missing + "' is not a file"],
        ),
        (
            {f"{P}GATEWAY_TLS_CERT": str(junk), f"{P}GATEWAY_TLS_KEY": str(ca.server_key)},
            ["do not load"],
        ),
        (  # a key that is not the certificate's
            {f"{P}GATEWAY_TLS_CERT": str(ca.server_cert), f"{P}GATEWAY_TLS_KEY": str(ca.ca_key)},
            ["do not load"],
        ),
        (
            {
                f"{P}GATEWAY_TLS_CERT": str(ca.server_cert),
                f"{P}GATEWAY_TLS_KEY": str(ca.server_key),
                f"{P}GATEWAY_TLS_CLIENT_CA": str(junk),
            },
            ["GATEWAY_TLS_CLIENT_CA", "does not load"],
        ),
        ({f"{P}GATEWAY_ALLOW_PLAINTEXT": "yes"}, ["GATEWAY_ALLOW_PLAINTEXT='yes' must be true or false"]),
    ]
    for env, expected in cases:
        (problem,) = _problems(env)
        assert all(e in problem for e in expected), (env, problem)


def test_upstream_security_mirrors_the_kafka_settings(ca: CertAuthority) -> None:
    s = GatewaySettings.from_env(
        {
            f"{P}GATEWAY_UPSTREAM_BOOTSTRAP": "kafka-0:9093",
            f"{P}GATEWAY_UPSTREAM_SECURITY_PROTOCOL": "sasl_ssl",
            f"{P}GATEWAY_UPSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
            f"{P}GATEWAY_UPSTREAM_SASL_USERNAME": "gateway",
            f"{P}GATEWAY_UPSTREAM_SASL_PASSWORD": "pw",
            f"{P}GATEWAY_UPSTREAM_SSL_CA_LOCATION": str(ca.ca),
            f"{P}KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",  # the audit cluster's: not the upstream's
        }
    )
    up = s.upstream_security
    assert (up.protocol, up.sasl_mechanism, up.sasl_username) == ("SASL_SSL", "SCRAM-SHA-512", "gateway")
    assert up.ca == str(ca.ca)
    assert up.tls and up.sasl and "pw" not in repr(s)
    ctx = up.context()
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED

    # the same cluster as KAFKA_BOOTSTRAP: each unset GATEWAY_UPSTREAM_* takes its KAFKA_* value
    same = GatewaySettings.from_env(
        {f"{P}KAFKA_SECURITY_PROTOCOL": "SSL", f"{P}KAFKA_SSL_CA_LOCATION": str(ca.ca)}
    ).upstream_security
    assert (same.protocol, same.ca) == ("SSL", str(ca.ca))
    assert GatewaySettings.from_env({}).upstream_security.context() is None


def test_upstream_security_problems_name_their_setting(ca: CertAuthority, tmp_path: Path) -> None:
    up = f"{P}GATEWAY_UPSTREAM_"
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({f"{up}SECURITY_PROTOCOL": "TLS"}, ["GATEWAY_UPSTREAM_SECURITY_PROTOCOL='TLS' must be one of"]),
        (
            {f"{up}SECURITY_PROTOCOL": "SASL_PLAINTEXT", f"{up}SASL_MECHANISM": "GSSAPI"},
            ["GATEWAY_UPSTREAM_SASL_MECHANISM='GSSAPI' must be one of", "SASL_USERNAME and"],
        ),
        ({f"{up}SASL_USERNAME": "gw"}, ["GATEWAY_UPSTREAM_SASL_USERNAME is set but", "has no SASL"]),
        ({f"{up}SSL_CA_LOCATION": str(ca.ca)}, ["GATEWAY_UPSTREAM_SSL_CA_LOCATION is set but", "has no TLS"]),
        (
            {f"{up}SECURITY_PROTOCOL": "SSL", f"{up}SSL_CA_LOCATION": str(tmp_path / "nope.pem")},
            ["GATEWAY_UPSTREAM_SSL_CA_LOCATION=", "is not a file"],
        ),
        (
            {f"{up}SECURITY_PROTOCOL": "SSL", f"{up}SSL_CERTIFICATE_LOCATION": str(ca.server_cert)},
            ["SSL_CERTIFICATE_LOCATION and", "must be set together"],
        ),
        (  # inherited from KAFKA_*: the message says where the value came from
            {f"{P}KAFKA_SECURITY_PROTOCOL": "SASL_SSL", f"{P}KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
            ["KAFKA_SASL_MECHANISM (the upstream's while", "must be one of PLAIN"],
        ),
    ]
    for env, expected in cases:
        problems = _problems(env)
        text = " | ".join(problems)
        assert all(e in text for e in expected), (env, problems)
        assert all(p.startswith("STREAMTOLL_") for p in problems), problems


def test_the_gateway_instance_id_names_the_gateway_in_its_episodes() -> None:
    import socket

    from gateway.errors import GatewaySettingsError
    from gateway.settings import GatewaySettings

    default = GatewaySettings.from_env({"STREAMTOLL_GATEWAY_LISTEN": "127.0.0.1:29092"})
    assert default.instance() == f"{socket.gethostname()}:29092"
    assert GatewaySettings.from_env({"STREAMTOLL_GATEWAY_INSTANCE_ID": "gw-eu-1"}).instance() == "gw-eu-1"
    with pytest.raises(GatewaySettingsError, match="GATEWAY_INSTANCE_ID"):
        GatewaySettings.from_env({"STREAMTOLL_GATEWAY_INSTANCE_ID": "gw/eu"})  # '/' separates the id's parts
