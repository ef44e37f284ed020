"""The partner portal (``/portal``) over real HTTP (uvicorn) against a real PostgreSQL: sessions
(sign-in, the failed-auth limiter, CSRF, sign-out, revoked keys), every page with seeded data, and
the isolation sweep — every portal URL of partner A requested with partner B's session and with
none never shows A's data or changes A's credentials."""

from __future__ import annotations

import contextlib
import html
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from billing.adapters.sink import upsert_episodes, upsert_windows
from billing.api.app import create_app
from billing.services import products
from billing.services.billing_run import run_billing
from billing.services.catalog import load_accounts, load_plans
from billing.services.credentials import create_credential, list_credentials
from billing.services.credit_notes import create_credit_note
from billing.services.grants import add_grant
from billing.services.invoices import list_invoices
from billing.services.keys import create_key, revoke_key
from billing.settings import BillingSettings
from metering.contracts import UsageWindow
from metering.entitlements import Episode
from streamtoll.serving import running

from .seed import DEC1
from .webdriver import chromium

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).parents[2] / "streamtoll" / "samples"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# what only acme's pages may show: a topic and a client id only acme used this month, its
# credential's user name, its invoice and credit note numbers, its name, its throttle's reason
ACME_TOPIC, ACME_CLIENT, ACME_REASON = "acme-private-topic", "acme-private-client", "acme produce over the plan rate"
# a product only acme's plan (growth) includes, with its own schema, and why finance rejected
# acme's request for payments-ingest: only acme's product pages may show them
PRIVATE_PRODUCT, PRIVATE_TOPIC, PRIVATE_SCHEMA = "Ledger sync (private beta)", "ledger.private.v1", "LedgerEntryPrivate"
REJECTED_REASON = "no data processing agreement on file yet"


def _hour(now: datetime, hours_ago: int) -> str:
    t = (now - timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)
    if t.month != now.month:  # early on the 1st: keep it in this month
        t = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return t.strftime("%Y-%m-%dT%H:00:00.000Z")


def window(
    start: str, principal: str, client: str, topic: str, direction: str, b: int, r: int, q: int = 1
) -> UsageWindow:
    return UsageWindow(start, "", "proxy", None, principal, client, "", topic, direction, b, r, q, 0, 1, "s/0")


@dataclass
class Portal:
    base: str
    keys: dict[str, str]
    acme_markers: list[str]
    acme_urls: list[str]  # every GET URL of acme's portal
    acme_credential: str
    engine: sa.Engine
    published: list[str]  # one entry per entitlements publication the app asked for


def load_products(
    engine: sa.Engine, tmp: Path, extra_plans: tuple[str, ...] = (), more: dict[str, dict[str, Any]] | None = None
) -> None:
    """The sample products plus ``ledger-sync`` (growth only, approval, an Avro schema); each
    product also offered on ``extra_plans`` (loading them again makes new versions) and with the
    fields of ``more[code]`` (deprecation dates)."""
    doc = yaml.safe_load((SAMPLES / "products.yaml").read_text())
    doc["products"].append(
        {
            "code": "ledger-sync",
            "name": PRIVATE_PRODUCT,
            "description": "Ledger entries for reconciliation, both ways.",
            "direction": "both",
            "topics": [{"name": PRIVATE_TOPIC, "schema": {"type": "avro", "file": "schemas/ledger.avsc"}}],
            "plans": [{"plan": "growth"}],
        }
    )
    for p in doc["products"]:
        p["plans"] += [{"plan": plan, "self_service": p["code"] == "orders-feed"} for plan in extra_plans]
        p.update((more or {}).get(p["code"], {}))
    if not (tmp / "schemas").exists():
        shutil.copytree(SAMPLES / "schemas", tmp / "schemas")
    avro = {"type": "record", "name": PRIVATE_SCHEMA, "fields": [{"name": "entry_id", "type": "string"}]}
    (tmp / "schemas" / "ledger.avsc").write_text(json.dumps(avro, indent=2))
    (tmp / "products.yaml").write_text(yaml.safe_dump(doc))
    products.load_products(engine, tmp / "products.yaml")


@contextlib.contextmanager
def sign_in(base: str, key: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in with ``key`` (cookies kept; redirects not followed)."""
    with httpx.Client(base_url=base, timeout=60) as client:
        page = client.get("/portal/sign-in")
        assert page.status_code == 200, page.text
        r = client.post("/portal/sign-in", data={"key": key, "csrf": CSRF.findall(page.text)[0]})
        assert r.status_code == 303 and r.headers["location"] == "/portal", r.text
        yield client


def csrf_of(client: httpx.Client, path: str = "/portal/credentials") -> str:
    return CSRF.findall(client.get(path).text)[0]


def form_of(client: httpx.Client, action: str) -> dict[str, str]:
    """The hidden fields (``csrf``, ``once``) of the credentials page's form posting to ``action``."""
    page = client.get("/portal/credentials").text
    found = re.search(f'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', page, re.S)
    assert found, action
    return dict(re.findall(r'name="(csrf|once)" value="([^"]+)"', found.group(1)))


@pytest.fixture
def portal(engine: sa.Engine, tmp_path: Path) -> Iterator[Portal]:
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    now = datetime.now(UTC)
    upsert_windows(
        engine,
        [
            window(_hour(now, 1), "User:acme-orders", ACME_CLIENT, ACME_TOPIC, "produce", 5_000, 50),
            window(_hour(now, 2), "User:acme-orders", ACME_CLIENT, ACME_TOPIC, "consume", 7_000, 70),
            window(_hour(now, 1), "User:globex-analytics", "globex-cli", "globex-topic", "produce", 3_000, 30),
        ],
    )
    start = now - timedelta(minutes=30)
    upsert_episodes(
        engine,
        [
            Episode(
                "gw/acme/1", "gw", "acme", "throttle", "produce", "quota", ACME_REASON, start, now, now, 1.0, 4, 1000
            )
        ],
    )
    acme_invoice = next(i for i in list_invoices(engine, account="acme", drafts=False))
    note = create_credit_note(engine, acme_invoice["ref"], reason="goodwill", amount=Decimal("10.00"))
    cred = create_credential(engine, "acme", "secret-svc")
    create_credential(engine, "globex", "globex-svc")
    # acme: subscribed to orders-feed, ledger-sync requested, payments-ingest rejected; a prepaid grant
    load_products(engine, tmp_path / "catalog")
    products.subscribe(engine, "acme", "orders-feed", "cli:test")
    products.subscribe(engine, "acme", "ledger-sync", "cli:test")
    asked = products.subscribe(engine, "acme", "payments-ingest", "cli:test")
    products.reject(engine, asked["id"], "cli:finance", REJECTED_REASON)
    add_grant(engine, "acme", reason="prepaid by wire", created_by="cli:test", amount=Decimal("120.00"), name="prepaid")
    keys = {
        "acme": create_key(engine, "partner", "acme"),
        "globex": create_key(engine, "partner", "globex"),
        "finance": create_key(engine, "finance", None),
    }
    period = now.strftime("%Y-%m")
    urls = [
        "/portal",
        "/portal/usage",
        "/portal/usage?by=client",
        "/portal/usage?by=direction&quantity=records",
        f"/portal/usage?granularity=hour&day={now.date().isoformat()}&by=topic",
        "/portal/throttles",
        "/portal/credentials",
        "/portal/billing",
        "/portal/products",
        "/portal/products/orders-feed",
        "/portal/products/payments-ingest",
        "/portal/products/ledger-sync",
        "/portal/products/ledger-sync/schemas/0",
        "/portal/products/ledger-sync?version=1",
        f"/portal/statements/{period}.csv",
        f"/portal/statements/{period}.pdf",
        "/portal/statements/2026-11.csv",
        f"/portal/invoices/{acme_invoice['ref']}.pdf",
        f"/portal/credit-notes/{note['number']}.pdf",
    ]
    markers = [ACME_TOPIC, ACME_CLIENT, ACME_REASON, cred.username, acme_invoice["number"], note["number"]]
    markers += [PRIVATE_PRODUCT, PRIVATE_TOPIC, PRIVATE_SCHEMA, REJECTED_REASON]
    settings = replace(BillingSettings(), portal_gateway_bootstrap="127.0.0.1:19092")
    published: list[str] = []
    app = create_app(engine, settings, auth_limit=1000, publish_entitlements=lambda: published.append("e") is None)
    with running(app) as base:
        yield Portal(base, keys, markers, urls, cred.id, engine, published)


def test_without_a_session_every_page_redirects_to_sign_in(portal: Portal) -> None:
    with httpx.Client(base_url=portal.base, timeout=60) as anon:
        for url in portal.acme_urls:
            r = anon.get(url)
            assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in", url
        for path in (
            "/portal/credentials",
            f"/portal/credentials/{portal.acme_credential}/revoke",
            "/portal/products/orders-feed/unsubscribe",
            "/portal/products/ledger-sync/unsubscribe",
            "/portal/products/payments-ingest/subscribe",
        ):
            r = anon.post(path, data={"csrf": "x", "once": "a-token-of-nobody-at-all"})
            assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in", path
    assert [c.state for c in list_credentials(portal.engine, "acme")] == ["active"]
    assert _states(portal.engine) == ACME_STATES and portal.published == []


def test_signing_in_sets_an_http_only_strict_cookie_without_the_key(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        cookie = next(c for c in client.cookies.jar if c.name == "stk_portal")
        assert portal.keys["acme"].split("_", 2)[2] not in (cookie.value or "")  # the secret is never in it
        page = client.get("/portal")
        assert page.status_code == 200 and 'id="account">acme<' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
    r = httpx.Client(base_url=portal.base).get("/portal/sign-in")
    nonce = CSRF.findall(r.text)[0]
    done = httpx.post(
        portal.base + "/portal/sign-in",
        data={"key": portal.keys["acme"], "csrf": nonce},
        cookies={"stk_portal_signin": nonce},
    )
    set_cookie = done.headers.get_list("set-cookie")
    session = next(v for v in set_cookie if v.startswith("stk_portal="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Secure" not in session
    assert "Max-Age=28800" in session  # 8 h


def test_a_bad_key_gets_one_clear_message_and_the_failed_auth_limiter(engine: sa.Engine) -> None:
    good = create_key(engine, "partner", "acme")
    finance = create_key(engine, "finance", None)
    with running(create_app(engine, auth_limit=3)) as base, httpx.Client(base_url=base, timeout=60) as client:
        nonce = CSRF.findall(client.get("/portal/sign-in").text)[0]
        r = client.post("/portal/sign-in", data={"key": finance, "csrf": nonce})
        assert r.status_code == 403 and "The portal is for partner keys" in r.text
        codes, texts = [], []
        for guess in ("stk_bad_guess", "", good[:-2] + "xx", "stk_x_y", "stk_a_b"):
            nonce = CSRF.findall(client.get("/portal/sign-in").text)[0]
            r = client.post("/portal/sign-in", data={"key": guess, "csrf": nonce})
            codes.append(r.status_code)
            texts.append(re.findall(r'role="alert" id="error">([^<]+)<', r.text))
        assert codes == [401, 401, 401, 429, 429]
        assert texts[0] == ["That key was not accepted. Check it and try again."]
        assert texts[3][0].startswith("Too many failed sign-ins from this address; try again in ")
        # the same limiter as the bearer API's: that address is blocked there too
        assert httpx.get(base + "/v1/invoices", headers={"Authorization": f"Bearer {good}"}).status_code == 429


def test_posts_without_the_csrf_token_are_refused(portal: Portal) -> None:
    before = len(list_credentials(portal.engine, "acme", include_revoked=True))
    with sign_in(portal.base, portal.keys["acme"]) as client:
        once = {"once": "a-token-of-the-form-0123"}
        for data in (once, {**once, "csrf": "forged"}, {**once, "csrf": csrf_of(client) + "x"}):
            r = client.post("/portal/credentials", data={**data, "name": "csrf-victim"})
            assert r.status_code == 403 and "This form expired" in r.text
            r = client.post(f"/portal/credentials/{portal.acme_credential}/revoke", data=data)
            assert r.status_code == 403
        # another session's token is not this one's
        with sign_in(portal.base, portal.keys["acme"]) as other:
            fields = {**form_of(other, "/portal/credentials"), "name": "csrf-victim"}
            r = client.post("/portal/credentials", data=fields)
            assert r.status_code == 403
        r = client.post("/portal/sign-out", data={})
        assert r.status_code == 403
    assert len(list_credentials(portal.engine, "acme", include_revoked=True)) == before
    # the sign-in form: its nonce cookie and field must match
    with httpx.Client(base_url=portal.base, timeout=60) as client:
        client.get("/portal/sign-in")
        r = client.post("/portal/sign-in", data={"key": portal.keys["acme"], "csrf": "not-the-nonce"})
        assert r.status_code == 403 and not any(c.name == "stk_portal" for c in client.cookies.jar)


def test_sign_out_a_tampered_cookie_and_a_revoked_key_end_the_session(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        value = client.cookies["stk_portal"]
        payload, mac = value.split(".")
        forged = httpx.get(portal.base + "/portal", cookies={"stk_portal": payload + "." + mac[:-2] + "AA"})
        assert forged.status_code == 303
        r = client.post("/portal/sign-out", data={"csrf": csrf_of(client, "/portal/products")})
        assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in"
        assert client.get("/portal").status_code == 303
    with sign_in(portal.base, portal.keys["acme"]) as client:
        assert client.get("/portal/products").status_code == 200
        revoke_key(portal.engine, portal.keys["acme"].split("_")[1])
        assert client.get("/portal/products").status_code == 303


def test_pages_show_the_partners_own_account(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        overview = client.get("/portal").text
        assert 'id="rated-total"' in overview and "growth" in overview
        usage = client.get("/portal/usage?by=client").text
        # 5,000 produced + 7,000 consumed this month, from the proxy
        assert 'id="usage-total">12.00 kB<' in usage and ACME_CLIENT in usage and "(counted from proxy)" in usage
        records = client.get("/portal/usage?by=direction&quantity=records").text
        assert 'id="usage-total">120<' in records  # 50 + 70
        assert ACME_REASON in client.get("/portal/throttles").text
        billing = client.get("/portal/billing").text
        assert portal.acme_markers[4] in billing and portal.acme_markers[5] in billing
        csv = client.get("/portal/statements/2026-11.csv")
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        assert csv.text.startswith("account,period") and "acme" in csv.text
        # the download is the API's statement, byte for byte
        api = httpx.get(
            portal.base + "/v1/statements/2026-11",
            params={"format": "csv"},
            headers={"Authorization": f"Bearer {portal.keys['acme']}"},
        )
        assert api.status_code == 200 and api.content == csv.content
        api_pdf = httpx.get(
            portal.base + "/v1/statements/2026-11.pdf", headers={"Authorization": f"Bearer {portal.keys['acme']}"}
        )
        assert client.get("/portal/statements/2026-11.pdf").content == api_pdf.content
        pdf = client.get(portal.acme_urls[-2])
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert client.get(portal.acme_urls[-1]).content.startswith(b"%PDF")


def test_credentials_create_rotate_revoke_with_the_password_shown_once(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        r = client.post("/portal/credentials", data={**form_of(client, "/portal/credentials"), "name": "web-app"})
        assert r.status_code == 200
        page = html.unescape(r.text)
        password = re.findall(r'id="issued-password">([^<]+)<', page)[0]
        assert '"sasl.username": "acme/web-app"' in page and f'"sasl.password": "{password}"' in page
        assert '"bootstrap.servers": "127.0.0.1:19092"' in page and '"security.protocol": "SASL_PLAINTEXT"' in page
        assert 'username="acme/web-app"' in page and f'password="{password}";' in page  # Java (JAAS)
        assert "sasl.mechanisms=SCRAM-SHA-512" in page and f"sasl.password={password}" in page  # kcat
        listed = client.get("/portal/credentials").text
        assert password not in listed and "acme/web-app" in listed
        bad = client.post("/portal/credentials", data={**form_of(client, "/portal/credentials"), "name": "Bad Name"})
        assert bad.status_code == 422 and "The name 'Bad Name' must be" in html.unescape(bad.text)
        cid = next(c.id for c in list_credentials(portal.engine, "acme") if c.name == "web-app")
        rotated = client.post(
            f"/portal/credentials/{cid}/rotate", data=form_of(client, f"/portal/credentials/{cid}/rotate")
        )
        new = re.findall(r'id="issued-password">([^<]+)<', rotated.text)[0]
        assert new != password and "The old password keeps working for 24 hours" in rotated.text
        revoked = client.post(
            f"/portal/credentials/{cid}/revoke", data=form_of(client, f"/portal/credentials/{cid}/revoke")
        )
        assert revoked.status_code == 200 and 'id="notice"' in revoked.text
    assert {c.name: c.state for c in list_credentials(portal.engine, "acme", include_revoked=True)}["web-app"] == (
        "revoked"
    )


def test_a_second_partner_never_sees_the_first_ones_data(portal: Portal) -> None:
    """The sweep: every acme portal URL with globex's session — and the actions on acme's
    credential — never show acme's data nor change it."""
    with sign_in(portal.base, portal.keys["acme"]) as acme:
        seen = {url: acme.get(url) for url in portal.acme_urls}
        # the markers are really on acme's own pages (else the sweep below would prove nothing)
        text = "".join(r.text for r in seen.values() if not r.headers["content-type"].startswith("application/pdf"))
        for marker in portal.acme_markers:
            assert marker in text, marker
    with sign_in(portal.base, portal.keys["globex"]) as globex:
        for url in portal.acme_urls:
            r = globex.get(url)
            assert r.status_code in (200, 404), (url, r.status_code)
            if r.headers["content-type"].startswith("application/pdf"):
                assert r.content != seen[url].content, url  # globex's own statement PDF, never acme's
                continue
            for marker in [*portal.acme_markers, "acme"]:
                assert marker.lower() not in r.text.lower(), (url, marker)
        for url in portal.acme_urls[-2:]:  # acme's invoice and credit note: not found, as if none existed
            assert globex.get(url).status_code == 404
        for action in ("rotate", "revoke"):
            fields = {**form_of(globex, "/portal/credentials"), "once": f"a-fresh-{action}-token-of-globex"}
            r = globex.post(f"/portal/credentials/{portal.acme_credential}/{action}", data=fields)
            assert r.status_code == 404 and "There is no such active credential." in r.text
            assert "acme" not in r.text.lower()
        # acme's products: globex can neither subscribe to acme's plan's product nor cancel acme's
        for i, (path, answer) in enumerate(
            (
                ("/portal/products/ledger-sync/subscribe", "There is no such product."),
                ("/portal/products/ledger-sync/unsubscribe", "There is no such subscription."),
                ("/portal/products/orders-feed/unsubscribe", "There is no such subscription."),
            )
        ):
            fields = {"csrf": csrf_of(globex), "once": f"a-fresh-token-of-globex-{i}"}
            r = globex.post(path, data=fields)
            assert r.status_code == 404 and answer in r.text, (path, r.status_code)
            assert "acme" not in r.text.lower() and PRIVATE_PRODUCT not in r.text
        # globex sees its own state of a product both plans include: not acme's subscription
        shared = globex.get("/portal/products/orders-feed").text
        assert 'data-state="none"' in shared and 'id="subscribe"' in shared
        assert "Prepaid balance" not in globex.get("/portal/billing").text  # globex has no grant
    assert [c.state for c in list_credentials(portal.engine, "acme")] == ["active"]
    assert _states(portal.engine) == ACME_STATES and portal.published == []


ACME_STATES = {"orders-feed": ["active"], "ledger-sync": ["requested"], "payments-ingest": ["rejected"]}


def _states(engine: sa.Engine, account: str = "acme") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for sub in products.account_subscriptions(engine, account):
        out.setdefault(sub["product"], []).append(sub["status"])
    return out


def product_form(client: httpx.Client, code: str, action: str) -> dict[str, str]:
    """The hidden fields of the product page's form posting to ``action`` (subscribe, unsubscribe)."""
    page = client.get(f"/portal/products/{code}").text
    path = f"/portal/products/{code}/{action}"
    found = re.search(f'<form method="post" action="{re.escape(path)}"[^>]*>(.*?)</form>', page, re.S)
    assert found, (code, action)
    return dict(re.findall(r'name="(csrf|once)" value="([^"]+)"', found.group(1)))


def test_products_pages_show_the_plans_products_and_where_each_subscription_stands(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        listing = html.unescape(client.get("/portal/products").text)
        states = dict(re.findall(r'id="product-([a-z0-9.-]+)".*?data-state="([a-z]+)"', listing, re.S))
        assert states == {"orders-feed": "subscribed", "payments-ingest": "rejected", "ledger-sync": "requested"}
        assert REJECTED_REASON in listing and PRIVATE_PRODUCT in listing
        assert "self-service: active as soon as you subscribe" in listing and "needs approval" in listing
        assert "consumer groups named <code>acme-…</code>" in listing
        assert "growth" not in listing  # the plans a product is offered on are never shown

        page = client.get("/portal/products/orders-feed")
        assert page.status_code == 200 and "v1" in page.text and 'id="unsubscribe"' in page.text
        shown = html.unescape(re.findall(r'<code id="schema-0">(.*?)</code>', page.text, re.S)[0])
        schema = client.get("/portal/products/orders-feed/schemas/0")
        assert schema.status_code == 200 and schema.text == shown  # the <pre> is the download, verbatim
        assert schema.text == (SAMPLES / "schemas" / "orders.v1.json").read_text()
        assert schema.headers["content-disposition"] == 'attachment; filename="orders-feed-v1-orders.v1.json"'
        assert schema.headers["content-type"].startswith("application/schema+json")
        # no schema on payments-ingest's topic; no such topic on orders-feed: not found
        assert client.get("/portal/products/payments-ingest/schemas/0").status_code == 404
        assert client.get("/portal/products/orders-feed/schemas/1").status_code == 404
        assert client.get("/portal/products/no-such-product").status_code == 404
        assert client.get("/portal/products/orders-feed?version=9").status_code == 404
        ledger = client.get("/portal/products/ledger-sync").text
        assert "Withdraw the request" in ledger and 'id="subscribe"' not in ledger
        rejected = client.get("/portal/products/payments-ingest").text
        assert "Request access again" in rejected and REJECTED_REASON in html.unescape(rejected)


def test_subscribing_in_the_portal_publishes_once_and_approval_shows_it_subscribed(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        # cancel orders-feed, then subscribe again (self-service): active at once, published
        gone = client.post(
            "/portal/products/orders-feed/unsubscribe", data=product_form(client, "orders-feed", "unsubscribe")
        )
        assert gone.status_code == 200 and "Cancelled." in gone.text and 'data-state="none"' in gone.text
        assert portal.published == ["e"]
        fields = product_form(client, "orders-feed", "subscribe")
        first = client.post("/portal/products/orders-feed/subscribe", data=fields)
        again = client.post("/portal/products/orders-feed/subscribe", data=fields)  # a double click
        assert first.status_code == 200 and "Subscribed." in first.text and 'data-state="subscribed"' in first.text
        assert again.status_code == 200 and "This form was sent before and was done then." in again.text
        assert portal.published == ["e", "e"]  # the second submit did nothing, published nothing
        key_id = portal.keys["acme"].split("_")[1]
        live = [x for x in products.account_subscriptions(portal.engine, "acme") if x["status"] == "active"]
        assert [(x["product"], x["requested_by"], x["decided_by"]) for x in live] == [
            ("orders-feed", f"partner:{key_id}", "self-service")
        ]
        # a form without its CSRF token: refused, nothing done
        bad = client.post("/portal/products/payments-ingest/subscribe", data={"once": "x" * 20, "csrf": "forged"})
        assert bad.status_code == 403
        # asking again for payments-ingest (rejected before): a request, shown as requested
        asked = client.post(
            "/portal/products/payments-ingest/subscribe", data=product_form(client, "payments-ingest", "subscribe")
        )
        assert "Access requested." in asked.text and 'data-state="requested"' in asked.text
        request_id = next(
            x["id"] for x in products.requests(portal.engine, "requested", "acme") if x["product"] == "payments-ingest"
        )
        # finance approves it through the API; the portal then shows it subscribed
        approved = httpx.post(
            f"{portal.base}/v1/product-requests/{request_id}/approve",
            headers={"Authorization": f"Bearer {portal.keys['finance']}"},
            timeout=30,
        )
        assert approved.status_code == 200 and approved.json()["status"] == "active"
        assert 'data-state="subscribed"' in client.get("/portal/products/payments-ingest").text
        listing = client.get("/portal/products").text
        assert re.search(r'id="product-payments-ingest".*?data-state="subscribed"', listing, re.S)
    assert _states(portal.engine)["payments-ingest"] == ["rejected", "active"]


def test_the_billing_page_shows_the_prepaid_balance(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        page = client.get("/portal/billing").text
    # 120.00 EUR granted today; November's invoice was finalized before it and December is not
    # billed yet: burned 0.00, pending 0.00, left 120.00, available 120.00
    assert 'id="money-available">120.00<' in page
    row = re.findall(r'<tr id="grant-\d+">(.*?)</tr>', page, re.S)
    assert len(row) == 1 and "prepaid" in row[0] and "EUR" in row[0]
    cells = re.findall(r'<td class="num">([^<]*)</td>', row[0])
    assert cells == ["120.00", "0.00", "0.00", "120.00", "120.00"]
    assert "no expiry" in row[0] and "active" in row[0]


A11Y = """
const focusable = document.querySelector('a[href], button, input:not([type=hidden]), select, textarea, summary');
const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), select')]
  .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id || e.name);
const nameless = [...document.querySelectorAll('button')]
  .filter(b => !(b.getAttribute('aria-label') || b.textContent.trim())).length;
const foreign = performance.getEntriesByType('resource')
  .filter(e => !e.name.startsWith(location.origin)).map(e => e.name);
return {
  skip_first: focusable !== null && focusable.classList.contains('skip'),
  h1: document.querySelectorAll('h1').length,
  lang: document.documentElement.lang,
  unlabelled, nameless, foreign,
  fits: document.documentElement.scrollWidth <= window.innerWidth + 1,
};
"""


def test_every_page_in_chromium_is_accessible_fits_a_phone_and_is_screenshotted(portal: Portal, tmp_path: Path) -> None:
    """Every page in a real Chromium: the skip link first, one h1, every field labelled, nothing
    from another origin, no sideways scrolling at 390 px; screenshots of each (into
    ``STREAMTOLL_PORTAL_SCREENSHOTS`` when set: ``docs/portal/`` is made this way)."""
    out = Path(os.environ.get("STREAMTOLL_PORTAL_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    rnd = random.Random(20)
    more = []  # a month so far of traffic on a few topics and clients, for the charts
    for day in range(1, now.day + 1):
        for hour in range(0, 24, 3):
            at = now.replace(day=day, hour=hour, minute=0, second=0, microsecond=0)
            if at >= now:
                continue
            for topic, client in (("orders", "acme-web"), ("payments", "acme-billing"), ("telemetry", "acme-etl")):
                for direction in ("produce", "consume"):
                    n = rnd.randint(2_000, 9_000) * (2 if topic == "orders" else 1)
                    start = at.strftime("%Y-%m-%dT%H:00:00.000Z")
                    more.append(window(start, "User:acme-" + client[5:], client, topic, direction, n * 700, n))
    upsert_windows(portal.engine, more)
    started = now - timedelta(days=2, hours=3)
    upsert_episodes(
        portal.engine,
        [
            Episode("gw-1/acme/cap", "gw-1", "acme", "throttle", "consume", "cap", "consume_bytes cap reached: "
                    "held to the plan's floor", started, now, None, 41.5, 120, 65536, "consume_bytes"),
            Episode("gw-2/acme/block", "gw-2", "acme", "block", "produce", "quota", "produce requests over 200/s",
                    started - timedelta(days=1), started, started - timedelta(days=1) + timedelta(minutes=4), 0, 37),
        ],
    )  # fmt: skip
    # acme on a plan with monthly caps since the 1st (the sample plans have none), so the pages
    # show caps and included volume: produce bytes under its cap, consume bytes over
    plans = yaml.safe_load((SAMPLES / "plans.yaml").read_text())
    growth = next(p for p in plans["plans"] if p["code"] == "growth")
    plans["plans"].append(
        {
            **growth,
            "code": "growth-capped",
            "name": "Growth (capped)",
            "caps": [
                {
                    "meter": "produce_bytes",
                    "included": 1,
                    "unit": "GB",
                    "policy": "throttle",
                    "floor_bytes_per_second": 65536,
                },
                {"meter": "consume_bytes", "included": "0.5", "unit": "GB", "policy": "soft"},
                {"meter": "produce_records", "included": 10, "unit": "million", "policy": "block"},
            ],
        }
    )
    accounts = yaml.safe_load((SAMPLES / "accounts.yaml").read_text())
    accounts["accounts"][0]["subscription"] = {"plan": "growth-capped", "starts_on": now.date().replace(day=1)}
    (tmp_path / "plans.yaml").write_text(yaml.safe_dump(plans))
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump(accounts))
    load_plans(portal.engine, tmp_path / "plans.yaml")
    load_accounts(portal.engine, tmp_path / "accounts.yaml")
    # the products offered on that plan too (their v2), orders-feed's v1 deprecated, payments-ingest's
    # v2 (the newest) too; acme's subscription moved to orders-feed v2 (subscribing again does that)
    until = (now + timedelta(days=90)).date()
    deprecations = {"orders-feed": {"deprecated_versions": {1: until}}, "payments-ingest": {"deprecated_until": until}}
    load_products(portal.engine, tmp_path / "catalog", ("growth-capped",), deprecations)
    products.subscribe(portal.engine, "acme", "orders-feed", "cli:test")
    add_grant(
        portal.engine,
        "acme",
        reason="launch offer",
        created_by="cli:test",
        units=Decimal(500),
        meter="consume_bytes",
        unit="GB",
        expires_on=until,
        name="launch offer",
    )
    pages = {
        "overview": "/portal",
        "usage": "/portal/usage?by=topic&quantity=bytes",
        "usage-hourly": f"/portal/usage?granularity=hour&day={now.date().isoformat()}&by=client&quantity=records",
        "throttles": "/portal/throttles",
        "credentials": "/portal/credentials",
        "billing": "/portal/billing",
        "products": "/portal/products",
        "product": "/portal/products/orders-feed",
    }
    with chromium(1280, 900) as browser:

        def check_and_shoot(name: str) -> None:
            found = browser.js(A11Y)
            assert found["skip_first"] and found["h1"] == 1 and found["lang"] == "en", (name, found)
            assert found["unlabelled"] == [] and found["nameless"] == 0 and found["foreign"] == [], (name, found)
            height = int(browser.js("return document.documentElement.scrollHeight"))
            browser.resize(1280, min(height + 140, 4000))
            (out / f"{name}.png").write_bytes(browser.screenshot())
            browser.resize(1280, 900)

        browser.open(portal.base + "/portal/sign-in")
        browser.wait("return document.getElementById('key')", what="the sign-in form")
        check_and_shoot("sign-in")
        browser.js(
            "document.getElementById('key').value = arguments[0];"
            "document.querySelector('main form button[type=submit]').click()",
            portal.keys["acme"],
        )
        browser.wait("return location.pathname === '/portal'", what="the overview")
        for name, url in pages.items():
            browser.open(portal.base + url)
            browser.wait("return document.readyState === 'complete' && document.querySelector('h1')", what=name)
            if name.startswith("usage"):
                browser.wait("return document.getElementById('chart')?.dataset.drawn", what=f"{name}'s chart")
            if name == "overview":
                assert browser.js("return document.querySelectorAll('#caps tbody tr').length") == 3
                assert browser.js("return document.querySelectorAll('#caps tr.reached').length") == 1
            if name == "usage":
                assert browser.js("return document.querySelectorAll('p.cap').length") == 2  # the bytes caps
            if name == "products":
                assert browser.js("return document.querySelectorAll('#products > li').length") == 3
                assert browser.js("return document.querySelectorAll('#products p.deprecated').length") == 1
            if name == "product":
                assert browser.js("return document.getElementById('state').dataset.state") == "subscribed"
                assert browser.js("return document.querySelectorAll('#versions li').length") == 2
            if name == "billing":
                assert browser.js("return document.getElementById('money-available').textContent") == "120.00"
            if name == "credentials":  # the page as it is right after creating one: the password shown once
                browser.js(
                    "document.getElementById('name').value = 'orders-svc'; document.getElementById('create').click()"
                )
                browser.wait("return document.getElementById('issued-python')", what="the new credential")
            check_and_shoot(name)
        # a phone: nothing scrolls sideways but the tables and code blocks in their own boxes
        browser.resize(390, 844)
        for name, url in pages.items():
            browser.open(portal.base + url)
            browser.wait("return document.readyState === 'complete'", what=name)
            assert browser.js(A11Y)["fits"], f"{name} scrolls sideways on a phone"
        browser.open(portal.base + pages["usage"])
        browser.wait("return document.getElementById('chart')?.dataset.drawn", what="the chart on a phone")
        (out / "phone-usage.png").write_bytes(browser.screenshot())
    assert all((out / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in ["sign-in", *pages])


def test_a_credential_form_sent_twice_does_its_work_once(portal: Portal) -> None:
    with sign_in(portal.base, portal.keys["acme"]) as client:
        fields = {**form_of(client, "/portal/credentials"), "name": "twice"}
        first = client.post("/portal/credentials", data=fields)
        again = client.post("/portal/credentials", data=fields)  # a double click, or a reload
        assert first.status_code == 200 and 'id="issued-password"' in first.text
        assert again.status_code == 200 and 'id="issued-password"' not in again.text
        assert "This form was sent before and was done then" in again.text
        cid = next(c.id for c in list_credentials(portal.engine, "acme") if c.name == "twice")
        rotate = form_of(client, f"/portal/credentials/{cid}/rotate")
        assert 'id="issued-password"' in client.post(f"/portal/credentials/{cid}/rotate", data=rotate).text
        assert 'id="issued-password"' not in client.post(f"/portal/credentials/{cid}/rotate", data=rotate).text
        # the same token for another form is refused, not run
        reused = client.post(f"/portal/credentials/{cid}/revoke", data=rotate)
        assert reused.status_code == 409 and "This form was used for something else" in reused.text
        # a form without its token (an old page) does nothing
        stale = client.post("/portal/credentials", data={"csrf": fields["csrf"], "name": "stale"})
        assert stale.status_code == 400
    names = [c.name for c in list_credentials(portal.engine, "acme", include_revoked=True)]
    assert names.count("twice") == 1 and "stale" not in names
    twice = next(c for c in list_credentials(portal.engine, "acme") if c.name == "twice")
    assert twice.state == "active" and twice.rotated_at is not None


def test_a_product_the_plan_no_longer_includes_stays_listed_while_subscribed(portal: Portal, tmp_path: Path) -> None:
    # acme moves to enterprise today: it includes orders-feed and payments-ingest, not ledger-sync
    accounts = yaml.safe_load((SAMPLES / "accounts.yaml").read_text())
    accounts["accounts"][0]["subscription"] = {"plan": "enterprise", "starts_on": datetime.now(UTC).date()}
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump(accounts))
    load_accounts(portal.engine, tmp_path / "accounts.yaml")
    with sign_in(portal.base, portal.keys["acme"]) as client:
        listing = html.unescape(client.get("/portal/products").text)
        states = dict(re.findall(r'id="product-([a-z0-9.-]+)".*?data-state="([a-z]+)"', listing, re.S))
        assert states == {"orders-feed": "subscribed", "payments-ingest": "rejected", "ledger-sync": "requested"}
        assert "no longer in your plan: it grants nothing" in listing
        gone = client.post(
            "/portal/products/ledger-sync/unsubscribe", data=product_form(client, "ledger-sync", "unsubscribe")
        )
        assert gone.status_code == 200 and "Cancelled." in gone.text
        assert 'id="product-ledger-sync"' not in client.get("/portal/products").text
        assert client.get("/portal/products/ledger-sync").status_code == 404  # neither offered nor subscribed
