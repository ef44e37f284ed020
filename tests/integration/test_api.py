"""The HTTP API over real HTTP (uvicorn) against a real PostgreSQL: data, isolation, validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from billing.api.app import create_app
from billing.services.billing_run import run_billing
from billing.services.keys import create_key, revoke_key
from streamtoll.serving import running

from .seed import DEC1
from .test_documents import pdf_text

pytestmark = pytest.mark.integration


@pytest.fixture
def api(engine: sa.Engine) -> Iterator[tuple[str, dict[str, str]]]:
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    run_billing(engine, "2026-12")  # drafts: finance sees them, partners never
    keys = {
        "acme": create_key(engine, "partner", "acme"),
        "globex": create_key(engine, "partner", "globex"),
        "finance": create_key(engine, "finance", None),
        "revoked": create_key(engine, "partner", "acme"),
    }
    revoke_key(engine, keys["revoked"].split("_")[1])
    with running(create_app(engine, auth_limit=1000)) as base:
        yield base, keys


def get(base: str, path: str, key: str | None = None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(base + path, headers=headers, params=params, timeout=30)


def test_partner_reads_its_own_invoices_and_statement(api: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    base, keys = api
    listed = get(base, "/v1/invoices", keys["acme"]).json()
    assert isinstance(listed, list), listed
    assert [(i["number"], i["account"], i["total"]) for i in listed] == [("INV-2026-000001", "acme", "199.92")]
    one = get(base, "/v1/invoices/INV-2026-000001", keys["acme"]).json()
    assert one["total"] == "199.92" and one["account"]["code"] == "acme"
    pdf = get(base, "/v1/invoices/INV-2026-000001/pdf", keys["acme"])
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert pdf.content == get(base, "/v1/invoices/INV-2026-000001/pdf", keys["acme"]).content
    st = get(base, "/v1/statements/2026-11", keys["acme"]).json()
    assert st["account"] == "acme" and st["rated_so_far"]["subtotal"] == "168.00"
    totals = {(r["source"], r["direction"]): r["bytes"] for r in st["totals"]}
    assert totals[("proxy", "produce")] == 1_250 * 10**9
    # proxy and the broker metrics both saw acme's produce traffic: the statement shows the gap
    assert st["source_differences"][0]["difference_bytes"] == (1_250 - 999) * 10**9
    pdf_statement = get(base, "/v1/statements/2026-11.pdf", keys["acme"])
    assert pdf_statement.headers["content-type"] == "application/pdf"
    text = pdf_text(pdf_statement.content, tmp_path)
    for expected in (
        "Usage statement",
        "Account acme",
        "Total so far",
        "By topic",
        "orders",
        "1,250,000,000,000",
        "Where two sources saw the same traffic",
        "251,000,000,000",
    ):
        assert expected in text, expected
    csv = get(base, "/v1/statements/2026-11", keys["acme"], format="csv")
    assert csv.headers["content-type"].startswith("text/csv") and "by_topic" in csv.text
    usage = get(
        base,
        "/v1/usage",
        keys["acme"],
        **{"from": "2026-11-01", "to": "2026-12-01", "granularity": "month", "group_by": "account,direction"},
    )
    assert usage.json() == [
        {
            "account": "acme",
            "direction": "consume",
            "bytes": 2000 * 10**9,
            "records": 0,
            "requests": 0,
            "denied_requests": 0,
        },
        {
            "account": "acme",
            "direction": "produce",
            "bytes": (1250 + 999) * 10**9,
            "records": 25_000_000,
            "requests": 10,
            "denied_requests": 0,
        },
    ]


def test_every_endpoint_with_every_wrong_key(api: tuple[str, dict[str, str]]) -> None:
    base, keys = api
    reads = [
        "/v1/invoices",
        "/v1/invoices/INV-2026-000001",
        "/v1/invoices/INV-2026-000001/pdf",
        "/v1/statements/2026-11",
        "/v1/usage?from=2026-11-01&to=2026-12-01",
    ]
    wrong = [None, "nonsense", "stk_000000000000_wrong", keys["revoked"], keys["acme"][:-2] + "xx"]
    for path in reads:
        for key in wrong:
            r = httpx.get(base + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
            assert r.status_code == 401, (path, key, r.status_code)
            assert "acme" not in r.text and "199.92" not in r.text
    # another partner: acme's invoice does not exist for globex, and nothing of acme leaks
    for path in reads[1:3]:
        r = get(base, path, keys["globex"])
        assert r.status_code == 404 and "acme" not in r.text.lower()
    assert get(base, "/v1/statements/2026-11", keys["globex"], account="acme").status_code == 404
    listed = get(base, "/v1/invoices", keys["globex"], account="acme")
    assert listed.status_code == 404
    usage = get(base, "/v1/usage", keys["globex"], **{"from": "2026-11-01", "to": "2026-12-01", "group_by": "account"})
    assert {r["account"] for r in usage.json()} == {"globex"}
    for path in (
        "/v1/billing/runs?period=2026-11",
        "/v1/invoices/draft-1/finalize",
        "/v1/invoices/INV-2026-000001/void?reason=x",
    ):
        for key in wrong:
            r = httpx.post(base + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
            assert r.status_code == 401, (path, key)
    # partner keys on finance endpoints
    for path in (
        "/v1/billing/runs?period=2026-11",
        "/v1/invoices/draft-1/finalize",
        "/v1/invoices/INV-2026-000001/void?reason=x",
    ):
        r = httpx.post(base + path, headers={"Authorization": f"Bearer {keys['acme']}"}, timeout=30)
        assert r.status_code == 403, path
    # partners never see drafts; finance does
    assert all(i["status"] != "draft" for i in get(base, "/v1/invoices", keys["acme"]).json())
    assert any(i["status"] == "draft" for i in get(base, "/v1/invoices", keys["finance"]).json())


def test_validation_gives_422_with_a_message(api: tuple[str, dict[str, str]]) -> None:
    base, keys = api
    k = keys["finance"]
    cases = [
        ("/v1/usage", {"from": "2026-13-01", "to": "2026-12-01"}),
        ("/v1/usage", {"from": "2026-12-01", "to": "2026-11-01"}),
        ("/v1/usage", {"from": "2020-01-01", "to": "2026-12-01"}),
        ("/v1/usage", {"from": "2026-11-01", "to": "2026-12-01", "group_by": "colour"}),
        ("/v1/usage", {"from": "2026-11-01", "to": "2026-12-01", "granularity": "week"}),
        ("/v1/statements/2026-13", {"account": "acme"}),
        ("/v1/statements/2026-11", {}),
        ("/v1/invoices", {"period": "last month"}),
    ]
    for path, params in cases:
        r = get(base, path, k, **params)
        assert r.status_code == 422, (path, params, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json" and r.json()["detail"]
    injection = "acme' OR '1'='1"
    refused = get(base, "/v1/invoices", k, account=injection)  # not an account code: refused before any query
    assert refused.status_code == 422 and refused.json()["errors"][0]["name"] == "account"
    assert get(base, "/v1/invoices/" + injection, k).status_code == 404


def test_finance_runs_billing_and_voids(api: tuple[str, dict[str, str]]) -> None:
    base, keys = api
    h = {"Authorization": f"Bearer {keys['finance']}"}
    runs = httpx.post(base + "/v1/billing/runs", params={"period": "2026-12"}, headers=h, timeout=60).json()
    assert {r["account"] for r in runs} == {"acme", "globex", "initech"}
    r = httpx.post(base + "/v1/invoices/INV-2026-000002/void", params={"reason": "duplicate"}, headers=h, timeout=30)
    assert (
        r.status_code == 200 and get(base, "/v1/invoices/INV-2026-000002", keys["finance"]).json()["status"] == "void"
    )
    assert httpx.get(base + "/openapi.json", timeout=30).json()["info"]["title"] == "streamtoll"
    assert httpx.get(base + "/healthz", timeout=30).json()["database"] == "reachable"


def test_failed_authentications_are_limited_per_address(engine: sa.Engine) -> None:
    good = create_key(engine, "partner", "acme")
    with running(create_app(engine, auth_limit=3)) as base:
        codes = [get(base, "/v1/invoices", "stk_bad_guess").status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        # while blocked, even a valid key from that address waits out the window
        assert get(base, "/v1/invoices", good).status_code == 429
