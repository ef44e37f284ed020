"""The partner portal's parts that need no server: session cookies and CSRF tokens
(``billing.api.portal_session``), the client configurations (``billing.services.portal``) and
the ``PORTAL_*`` settings."""

from __future__ import annotations

import ast
import base64
import json

import pytest

from billing.api.portal_session import Sessions
from billing.errors import BillingSettingsError
from billing.services.portal import client_configs, schema_download, subscription_state
from billing.settings import BillingSettings

SECRET = b"s" * 32


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_session_reads_back_until_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(SECRET, hours=8, https=False, clock=clock)
    value = sessions.issue("k1", "acme")
    found = sessions.read(value)
    assert found is not None and (found.key_id, found.account) == ("k1", "acme")
    assert found.expires == 1_000_000 + 8 * 3600
    clock.t += 8 * 3600 - 1
    assert sessions.read(value) is not None
    clock.t += 1  # expires is exclusive: at that second it is over
    assert sessions.read(value) is None


def test_a_forged_or_altered_cookie_is_no_session() -> None:
    sessions = Sessions(SECRET, hours=8, https=False)
    value = sessions.issue("k1", "acme")
    payload, mac = value.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other = base64.urlsafe_b64encode(json.dumps({**doc, "a": "globex"}).encode()).rstrip(b"=").decode()
    assert sessions.read(other + "." + mac) is None  # another account under the old signature
    assert sessions.read(value + "x") is None
    assert sessions.read("") is None and sessions.read(None) is None and sessions.read("a.b.c") is None
    assert Sessions(b"t" * 32, hours=8, https=False).read(value) is None  # another server's secret
    # no secret set: a random one per process, so another process's cookie is not accepted
    assert Sessions(None, 8, False).read(Sessions(None, 8, False).issue("k1", "acme")) is None


def test_csrf_tokens_are_bound_to_their_session() -> None:
    sessions = Sessions(SECRET, hours=8, https=False)
    one = sessions.read(sessions.issue("k1", "acme"))
    two = sessions.read(sessions.issue("k1", "acme"))
    assert one is not None and two is not None
    assert sessions.csrf_ok(one, sessions.csrf(one))
    assert not sessions.csrf_ok(one, sessions.csrf(two))
    assert not sessions.csrf_ok(one, None) and not sessions.csrf_ok(one, "")
    assert Sessions.nonce_ok("abc", "abc") and not Sessions.nonce_ok("abc", "abd")
    assert not Sessions.nonce_ok(None, "") and not Sessions.nonce_ok("", "")


def test_cookie_names_behind_https_take_the_host_prefix() -> None:
    assert Sessions(SECRET, 8, https=False).cookie == "stk_portal"
    assert Sessions(SECRET, 8, https=True).cookie == "__Host-stk_portal"
    assert Sessions(SECRET, 8, https=True).nonce_cookie == "__Host-stk_portal_signin"


def test_the_python_config_is_a_literal_with_exactly_the_credential() -> None:
    cfg = client_configs("gw.example.com:19092", "SASL_SSL", "acme/orders-svc", "p4ss-w0rd_")
    literal = cfg["python"].split("config = ", 1)[1].split("\n}\n", 1)[0] + "\n}"
    assert ast.literal_eval(literal) == {
        "bootstrap.servers": "gw.example.com:19092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "acme/orders-svc",
        "sasl.password": "p4ss-w0rd_",
    }
    assert 'username="acme/orders-svc"' in cfg["java"] and 'password="p4ss-w0rd_";' in cfg["java"]
    assert "security.protocol=SASL_SSL\n" in cfg["java"] and "sasl.mechanism=SCRAM-SHA-512\n" in cfg["java"]
    kcat = [line for line in cfg["kcat"].splitlines() if not line.startswith("#")]
    assert kcat == [
        "bootstrap.servers=gw.example.com:19092",
        "security.protocol=SASL_SSL",
        "sasl.mechanisms=SCRAM-SHA-512",
        "sasl.username=acme/orders-svc",
        "sasl.password=p4ss-w0rd_",
    ]


def test_a_listed_credential_shows_placeholders_not_a_password() -> None:
    cfg = client_configs("", "SASL_SSL", "acme/orders-svc", None)
    assert all("<your password>" in text and "<gateway host:port>" in text for text in cfg.values())


def test_portal_settings_are_checked() -> None:
    s = BillingSettings.from_env(
        {
            "STREAMTOLL_PORTAL_SECRET": "x" * 32,
            "STREAMTOLL_PORTAL_HTTPS": "true",
            "STREAMTOLL_PORTAL_SESSION_HOURS": "0.5",
            "STREAMTOLL_PORTAL_GATEWAY_BOOTSTRAP": "gw-1.example.com:19092,gw-2.example.com:19092",
        }
    )
    assert (s.portal_secret, s.portal_https, s.portal_session_hours) == (b"x" * 32, True, 0.5)
    assert s.portal_security_protocol == "SASL_SSL"
    local = BillingSettings.from_env({"STREAMTOLL_PORTAL_GATEWAY_BOOTSTRAP": "127.0.0.1:19092"})
    assert local.portal_security_protocol == "SASL_PLAINTEXT"  # the gateway allows plaintext on loopback only
    forced = {
        "STREAMTOLL_PORTAL_GATEWAY_BOOTSTRAP": "localhost:1",
        "STREAMTOLL_PORTAL_GATEWAY_SECURITY_PROTOCOL": "sasl_ssl",
    }
    assert BillingSettings.from_env(forced).portal_security_protocol == "SASL_SSL"
    assert "y" * 40 not in repr(BillingSettings.from_env({"STREAMTOLL_PORTAL_SECRET": "y" * 40}))  # never logged
    with pytest.raises(BillingSettingsError) as err:
        BillingSettings.from_env(
            {
                "STREAMTOLL_PORTAL_SECRET": "short",
                "STREAMTOLL_PORTAL_HTTPS": "yes",
                "STREAMTOLL_PORTAL_SESSION_HOURS": "0",
                "STREAMTOLL_PORTAL_GATEWAY_BOOTSTRAP": "no port",
                "STREAMTOLL_PORTAL_GATEWAY_SECURITY_PROTOCOL": "PLAINTEXT",
            }
        )
    text = str(err.value)
    for name in ("SECRET", "HTTPS", "SESSION_HOURS", "GATEWAY_BOOTSTRAP", "GATEWAY_SECURITY_PROTOCOL"):
        assert f"STREAMTOLL_PORTAL_{name}" in text, name


def test_a_product_shows_the_live_subscription_else_the_last_rejection_with_its_reason() -> None:
    requested = {"id": 2, "status": "requested", "version": 1}
    rejected = {"id": 1, "status": "rejected", "version": 1, "reason": "no DPA"}
    cancelled = {"id": 3, "status": "cancelled", "version": 1}
    assert subscription_state(requested, [rejected, requested])["state"] == "requested"
    assert subscription_state({**requested, "status": "active"}, [])["state"] == "subscribed"
    shown = subscription_state(None, [rejected])
    assert shown["state"] == "rejected" and shown["subscription"]["reason"] == "no DPA"
    # cancelled after the rejection (a later request, withdrawn): nothing to show
    assert subscription_state(None, [rejected, cancelled]) == {"state": None, "subscription": None}
    assert subscription_state(None, []) == {"state": None, "subscription": None}


def test_a_schema_downloads_under_a_name_from_its_product_version_and_topic() -> None:
    doc = {
        "code": "orders-feed",
        "version": 3,
        "topics": [
            {"pattern": "orders.v1", "schema": {"type": "json", "file": "s/o.json", "text": "{}"}},
            {"pattern": "payments.in.", "schema": None},
            {"pattern": "ledger/../x", "schema": {"type": "protobuf", "file": "l.proto", "text": "syntax"}},
        ],
    }
    assert schema_download(doc, 0) == ("orders-feed-v3-orders.v1.json", "application/schema+json", "{}")
    assert schema_download(doc, 1) is None and schema_download(doc, 3) is None and schema_download(doc, -1) is None
    # a topic's characters that do not belong in a file name are replaced
    assert schema_download(doc, 2) == ("orders-feed-v3-ledger_.._x.proto", "text/plain; charset=utf-8", "syntax")
