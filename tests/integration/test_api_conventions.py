"""The HTTP API's conventions over real HTTP against a real PostgreSQL: the OpenAPI document,
problem+json errors, cursor pagination, Idempotency-Key, invoice refs, the client address behind
trusted proxies, and the latency and process metrics."""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy.exc import DataError

from billing.api import models
from billing.api.app import create_app
from billing.api.problems import MEDIA_TYPE, PROBLEMS, TYPE_BASE
from billing.services.billing_run import run_billing
from billing.services.keys import create_key
from billing.services.products import load_products
from billing.settings import BillingSettings
from streamtoll.serving import running

from .seed import DEC1

SAMPLES = Path(__file__).parents[2] / "streamtoll" / "samples"

pytestmark = pytest.mark.integration


@dataclass
class Api:
    base: str
    keys: dict[str, str]
    engine: sa.Engine
    app: FastAPI

    def request(
        self,
        method: str,
        path: str,
        key: str | None = "finance",
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        h = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.request(method, self.base + path, params=params, headers={**h, **(headers or {})}, timeout=120)

    def get(self, path: str, key: str | None = "finance", **params: Any) -> httpx.Response:
        return self.request("GET", path, key, params)

    def post(
        self, path: str, key: str | None = "finance", idempotency: str | None = None, **params: Any
    ) -> httpx.Response:
        headers = {"Idempotency-Key": idempotency} if idempotency is not None else {}
        return self.request("POST", path, key, params, headers)


@pytest.fixture
def api(engine: sa.Engine) -> Iterator[Api]:
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)  # INV-2026-000001 … 3
    run_billing(engine, "2026-12")  # drafts
    keys = {
        "acme": create_key(engine, "partner", "acme"),
        "globex": create_key(engine, "partner", "globex"),
        "finance": create_key(engine, "finance", None),
        "finance2": create_key(engine, "finance", None),
        "ops": create_key(engine, "ops", None),
    }
    app = create_app(engine, auth_limit=1000)
    with running(app) as base:
        yield Api(base, keys, engine, app)


def _problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """``r`` is the problem ``slug`` (RFC 9457) with every member, for the path asked."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == MEDIA_TYPE, r.headers
    body: dict[str, Any] = r.json()
    assert body["type"] == TYPE_BASE + slug, body
    assert body["title"] == PROBLEMS[slug].title and body["status"] == status and body["detail"], body
    assert body["instance"] == r.request.url.raw_path.decode().split("?")[0], body
    return body


def _drafts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT account_code, id FROM invoices WHERE status = 'draft'")).all()
    return {r.account_code: r.id for r in rows}


# --- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_has_the_bearer_scheme_models_errors_and_media_types(api: Api) -> None:
    doc = httpx.get(api.base + "/openapi.json", timeout=30).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "stk_<key id>_<secret>",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    schemas = doc["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "instance"}
    operations = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    # 16 + the credit notes (issue, list, one, its PDF) + the webhooks (6) + grants (add, list, balance)
    # + the products (list, one, subscribe, requests, approve, reject) + amendments (list, one)
    assert len(operations) == 37
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        protected = path.startswith("/v1/")
        assert op.get("security") == ([{"bearer": []}] if protected else None), where
        ok = op["responses"]["200"]["content"]
        for media, content in ok.items():
            schema = content["schema"]
            if media == "application/json":  # a model, or a list of one
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                assert ref and ref.split("/")[-1] in schemas, where
            else:
                assert schema["type"] == "string", where
        if not protected:
            continue
        expected = {"401", "403", "422", "429", "503"} | ({"409"} if method == "post" else set())
        if path != "/v1/live" and path != "/v1/billing/runs":
            expected.add("404")
        if path in ("/v1/usage", "/v1/statements/{period}"):
            expected.add("406")  # Accept chooses the media type
        errors = {code: r for code, r in op["responses"].items() if code != "200"}
        assert set(errors) == expected, where
        for code, r in errors.items():
            assert r["content"] == {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}, where
            named = re.findall(re.escape(TYPE_BASE) + r"([a-z-]+)", r["description"])
            assert named and all(PROBLEMS[s].status == int(code) for s in named), (where, code)
        assert "WWW-Authenticate" in errors["401"]["headers"] and "Retry-After" in errors["429"]["headers"]
    paths = doc["paths"]
    assert set(paths["/v1/usage"]["get"]["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert set(paths["/v1/statements/{period}"]["get"]["responses"]["200"]["content"]) == {
        "application/json",
        "text/csv",
        "application/pdf",
    }
    assert set(paths["/v1/invoices/{ref}/pdf"]["get"]["responses"]["200"]["content"]) == {"application/pdf"}
    for path in ("/v1/usage", "/v1/invoices"):
        assert "Link" in paths[path]["get"]["responses"]["200"]["headers"]
    for path in (
        "/v1/billing/runs",
        "/v1/invoices/{ref}/finalize",
        "/v1/invoices/{ref}/void",
        "/v1/credentials",
        "/v1/credentials/{credential_id}/rotate",
        "/v1/credentials/{credential_id}/revoke",
        "/v1/webhooks",
        "/v1/webhooks/{endpoint_id}/remove",
        "/v1/webhooks/deliveries/{delivery_id}/replay",
        "/v1/products/{code}/subscriptions",
        "/v1/product-requests/{request_id}/approve",
        "/v1/product-requests/{request_id}/reject",
    ):
        params = {p["name"] for p in paths[path]["post"]["parameters"]}
        assert "Idempotency-Key" in params, path


def _valid(model: type[BaseModel], body: Any) -> None:
    model.model_validate(body)  # extra fields are refused: the document says all there is


def test_answers_match_their_documented_models(api: Api) -> None:
    for granularity, group_by in (
        ("hour", "source,account,principal,client_id,virtual_cluster,topic,direction"),
        ("month", "direction"),
    ):
        rows = api.get(
            "/v1/usage", **{"from": "2026-11-01", "to": "2026-12-01"}, granularity=granularity, group_by=group_by
        ).json()
        assert rows
        for row in rows:
            _valid(models.UsageRow, row)
    _valid(models.Statement, api.get("/v1/statements/2026-11", "acme").json())
    listed = api.get("/v1/invoices").json()
    assert {i["status"] for i in listed} == {"finalized", "draft"}
    for row in listed:
        _valid(models.InvoiceSummary, row)
        _valid(models.Invoice, api.get(f"/v1/invoices/{row['ref']}").json())
    for row in api.post("/v1/billing/runs", period="2026-12").json():
        _valid(models.BillingRunResult, row)
    _valid(models.Finalized, api.post(f"/v1/invoices/draft-{_drafts(api.engine)['acme']}/finalize").json())
    _valid(models.Voided, api.post("/v1/invoices/INV-2026-000001/void", reason="test").json())
    _valid(models.Health, api.get("/healthz", None).json())
    _valid(models.Liveness, api.get("/healthz/live", None).json())

    load_products(api.engine, SAMPLES / "products.yaml")
    for key in ("finance", "acme"):
        products = api.get("/v1/products", key).json()
        assert [p["code"] for p in products] == ["orders-feed", "payments-ingest"], key
        for p in products:
            _valid(models.Product, p)
    _valid(models.Product, api.get("/v1/products/orders-feed", "acme").json())
    requested = api.post("/v1/products/payments-ingest/subscriptions", "acme", idempotency="sub-1").json()
    _valid(models.ProductSubscription, requested)
    for row in api.get("/v1/product-requests", status="requested").json():
        _valid(models.ProductSubscription, row)
    _valid(models.ProductSubscription, api.post(f"/v1/product-requests/{requested['id']}/approve").json())


# --- errors ----------------------------------------------------------------------------------


def test_every_error_answer_is_a_problem_with_a_documented_type(api: Api) -> None:
    r = api.get("/v1/invoices", None)
    _problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    _problem(api.request("GET", "/v1/invoices", None, headers={"Authorization": "Bearer stk_x_y"}), 401, "unauthorized")
    _problem(api.post("/v1/billing/runs", "acme", period="2026-11"), 403, "forbidden")
    _problem(api.get("/v1/invoices", "ops"), 403, "forbidden")
    _problem(api.get("/v1/live", "acme"), 403, "forbidden")
    _problem(api.get("/v1/invoices/INV-2099-000001"), 404, "not-found")
    _problem(api.get("/v1/invoices/INV-2026-000001", "globex"), 404, "not-found")
    _problem(api.get("/v1/invoices", "globex", account="acme"), 404, "not-found")
    _problem(api.get("/v1/nothing-here", None), 404, "not-found")
    _problem(api.get("/v1/billing/runs"), 405, "method-not-allowed")
    _problem(api.post("/v1/invoices/INV-2026-000001/finalize"), 409, "invoice-state-conflict")
    _problem(
        api.post(f"/v1/invoices/draft-{_drafts(api.engine)['acme']}/void", reason="x"), 409, "invoice-state-conflict"
    )
    # 422: the invalid parameters are listed
    bad_date = _problem(api.get("/v1/usage", **{"from": "2026-13-01", "to": "2026-12-01"}), 422, "invalid-request")
    assert [(e["name"], e["in"]) for e in bad_date["errors"]] == [("from", "query")]
    missing = _problem(api.get("/v1/usage"), 422, "invalid-request")
    assert {e["name"] for e in missing["errors"]} == {"from", "to"}
    limits = _problem(api.get("/v1/invoices", limit=0), 422, "invalid-request")
    assert limits["errors"][0]["name"] == "limit"
    order = _problem(api.get("/v1/usage", **{"from": "2026-12-01", "to": "2026-11-01"}), 422, "invalid-request")
    assert order["errors"][0]["name"] == "to"
    nul = _problem(api.get("/v1/invoices", account="a\x00b"), 422, "invalid-request")
    assert nul["detail"] == "parameters may not contain NUL characters" and nul["errors"][0]["name"] == "account"
    _problem(api.get("/v1/invoices", cursor="not-a-cursor"), 422, "invalid-request")
    _problem(api.get("/v1/statements/2026-11"), 422, "invalid-request")
    _problem(api.post("/v1/invoices/INV-2026-000001/void", reason=" "), 422, "invalid-request")
    _problem(api.post("/v1/billing/runs", period="11/2026"), 422, "invalid-request")
    _problem(api.post("/v1/billing/runs", idempotency="x" * 256, period="2026-12"), 422, "invalid-request")
    _problem(api.get("/v1/live", "ops"), 503, "live-view-unavailable")


def test_rate_limit_database_down_data_error_and_bugs_are_problems(api: Api) -> None:
    with running(create_app(api.engine, auth_limit=2)) as base:
        for _ in range(2):
            httpx.get(base + "/v1/invoices", headers={"Authorization": "Bearer stk_bad_guess"}, timeout=30)
        r = httpx.get(base + "/v1/invoices", headers={"Authorization": f"Bearer {api.keys['acme']}"}, timeout=30)
        _problem(r, 429, "too-many-failed-authentications")
        assert 0 < int(r.headers["retry-after"]) <= 60

    nowhere = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with running(create_app(nowhere)) as base:
        r = httpx.get(base + "/v1/invoices", headers={"Authorization": f"Bearer {api.keys['acme']}"}, timeout=30)
        _problem(r, 503, "database-unavailable")
    nowhere.dispose()

    app = create_app(api.engine)

    def data_error() -> None:
        raise DataError("SELECT :x", {"x": "\x00"}, ValueError("NUL"))

    def bug() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/test/data-error", data_error)
    app.add_api_route("/v1/test/bug", bug)
    with running(app) as base:
        _problem(httpx.get(base + "/v1/test/data-error", timeout=30), 422, "invalid-request")
        for _ in range(2):
            r = _problem(httpx.get(base + "/v1/test/bug", timeout=30), 500, "internal-error")
            assert "a bug" not in r["detail"]  # nothing of the exception reaches the caller
        metrics = httpx.get(base + "/metrics", timeout=30).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(metrics)
        for s in fam.samples
    }
    assert samples[("streamtoll_http_requests_total", (("route", "/v1/test/bug"), ("status", "500")))] == 2
    count = (
        "streamtoll_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/test/bug"), ("status", "500")),
    )
    assert samples[count] == 2


# --- pagination ------------------------------------------------------------------------------


def _walk(api: Api, path: str, key: str = "finance", between: Any = None, **params: Any) -> list[httpx.Response]:
    pages = [api.get(path, key, **params)]
    while "next" in pages[-1].links:
        if between is not None:
            between(len(pages))
        link = pages[-1].links["next"]["url"]
        assert link.startswith(path + "?"), link  # relative: right behind any proxy
        pages.append(httpx.get(api.base + link, headers={"Authorization": f"Bearer {api.keys[key]}"}, timeout=60))
        assert pages[-1].status_code == 200, pages[-1].text
    return pages


def test_invoice_pages_walk_every_invoice_exactly_once(api: Api) -> None:
    everything = api.get("/v1/invoices").json()
    assert len(everything) == 6 and "link" not in api.get("/v1/invoices").headers
    assert [i["ref"] for i in everything] == [i["number"] or f"draft-{i['id']}" for i in everything]
    for limit in (1, 2, 4, 5, 6):
        pages = _walk(api, "/v1/invoices", limit=limit)
        assert len(pages) == -(-6 // limit)
        assert [i for p in pages for i in p.json()] == everything, limit
    # the filters stay on every page; partners never see drafts, on any page
    november = [i for p in _walk(api, "/v1/invoices", period="2026-11", limit=1) for i in p.json()]
    assert [i["number"] for i in november] == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003"]
    acme = [i for p in _walk(api, "/v1/invoices", "acme", limit=1) for i in p.json()]
    assert [i["number"] for i in acme] == ["INV-2026-000001"]
    # a cursor of one listing is refused by the other
    usage_cursor = api.get("/v1/usage", **{"from": "2026-11-01", "to": "2026-12-01"}, limit=1).links["next"]["url"]
    cursor = httpx.URL(usage_cursor).params["cursor"]
    _problem(api.get("/v1/invoices", cursor=cursor), 422, "invalid-request")


def test_invoices_added_between_pages_skip_or_repeat_nothing(api: Api) -> None:
    before = {i["id"] for i in api.get("/v1/invoices").json()}

    def bill_more(page: int) -> None:
        # a month before every invoice so far, then one after: both kinds of neighbours appear
        run_billing(api.engine, {1: "2026-10", 2: "2027-01"}.get(page, "2027-02"))

    seen = [i["id"] for p in _walk(api, "/v1/invoices", between=bill_more, limit=2) for i in p.json()]
    assert len(seen) == len(set(seen)), "an invoice was served twice"
    assert before <= set(seen), "an invoice that existed all along was skipped"
    after = {i["id"] for i in api.get("/v1/invoices").json()}
    assert len(after) > len(before)  # invoices were indeed added


def test_usage_pages_concatenate_to_the_whole_result(api: Api) -> None:
    params = {"from": "2026-11-01", "to": "2026-12-01", "granularity": "day", "group_by": "topic,principal,direction"}
    whole = api.get("/v1/usage", **params).json()
    assert len(whole) >= 8 and "link" not in api.get("/v1/usage", **params).headers
    whole_csv = api.get("/v1/usage", **params, format="csv").text
    for limit in (1, 3, 7):
        pages = _walk(api, "/v1/usage", **params, limit=limit)
        assert [r for p in pages for r in p.json()] == whole
        csv_pages = _walk(api, "/v1/usage", **params, limit=limit, format="csv")
        assert len(csv_pages) == len(pages)
        header = csv_pages[0].text.splitlines()[0]
        assert all(p.text.splitlines()[0] == header for p in csv_pages)  # every page has its header
        joined = csv_pages[0].text + "".join(p.text.split("\n", 1)[1] for p in csv_pages[1:])
        assert joined == whole_csv
    # a partner's pages are its own rows, paged the same way
    acme = {**params, "group_by": "account,topic,direction"}
    assert [r for p in _walk(api, "/v1/usage", "acme", **acme, limit=1) for r in p.json()] == api.get(
        "/v1/usage", "acme", **acme
    ).json()
    # a cursor is bound to its grouping
    link = api.get("/v1/usage", **params, limit=1).links["next"]["url"]
    cursor = httpx.URL(link).params["cursor"]
    _problem(api.get("/v1/usage", **{**params, "group_by": "topic"}, cursor=cursor), 422, "invalid-request")


def test_empty_usage_csv_still_has_its_header(api: Api) -> None:
    r = api.get("/v1/usage", **{"from": "2025-01-01", "to": "2025-02-01"}, format="csv", group_by="topic,direction")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text == "day,topic,direction,bytes,records,requests,denied_requests\n"
    month = api.get("/v1/usage", **{"from": "2025-01-01", "to": "2025-02-01"}, granularity="month", format="csv")
    assert month.text == "source,direction,bytes,records,requests,denied_requests\n"
    assert api.get("/v1/usage", **{"from": "2025-01-01", "to": "2025-02-01"}).json() == []


# --- Idempotency-Key -------------------------------------------------------------------------


def _same(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code and again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers


def _runs(api: Api) -> float:
    fams = text_string_to_metric_families(httpx.get(api.base + "/metrics", timeout=30).text)
    return sum(s.value for f in fams for s in f.samples if s.name == "streamtoll_billing_runs_total")


def test_a_retried_post_gets_the_first_answer(api: Api) -> None:
    run = api.post("/v1/billing/runs", idempotency="run-1", period="2026-12")
    assert run.status_code == 200
    runs = _runs(api)
    _same(run, api.post("/v1/billing/runs", idempotency="run-1", period="2026-12"))
    assert _runs(api) == runs  # not run again
    # finalize: the retry gets the first 200, not "already finalized"
    draft = f"/v1/invoices/draft-{_drafts(api.engine)['acme']}/finalize"
    done = api.post(draft, idempotency="fin-1")
    assert done.status_code == 200 and done.json()["number"].startswith("INV-")
    _same(done, api.post(draft, idempotency="fin-1"))
    _problem(api.post(draft), 409, "invoice-state-conflict")  # without a key: what it is now
    number = done.json()["number"]
    voided = api.post(f"/v1/invoices/{number}/void", idempotency="void-1", reason="duplicate")
    assert voided.json() == {"ref": number, "number": number, "status": "void"}
    _same(voided, api.post(f"/v1/invoices/{number}/void", idempotency="void-1", reason="duplicate"))
    # a first answer that was an error is the answer too
    missing = api.post("/v1/invoices/INV-2099-000001/void", idempotency="void-2", reason="x")
    _problem(missing, 404, "not-found")
    _same(missing, api.post("/v1/invoices/INV-2099-000001/void", idempotency="void-2", reason="x"))
    # a structured-field string is the same key
    _same(run, api.post("/v1/billing/runs", idempotency='"run-1"', period="2026-12"))


def test_idempotency_keys_per_caller_per_request_and_for_a_day(api: Api) -> None:
    drafts = _drafts(api.engine)
    first = api.post(f"/v1/invoices/draft-{drafts['acme']}/finalize", idempotency="k")
    assert first.status_code == 200
    # the same key for another request: 422, nothing done
    for other in (
        api.post(f"/v1/invoices/draft-{drafts['globex']}/finalize", idempotency="k"),
        api.post("/v1/billing/runs", idempotency="k", period="2026-12"),
        api.request(
            "POST", f"/v1/invoices/draft-{drafts['acme']}/finalize", params={"x": "1"}, headers={"Idempotency-Key": "k"}
        ),
    ):
        body = _problem(other, 422, "idempotency-key-reused")
        assert body["errors"] == [{"name": "idempotency-key", "in": "header", "reason": "used for another request"}]
    assert _drafts(api.engine)["globex"] == drafts["globex"]
    # another caller's key of the same name is its own
    second = api.post(f"/v1/invoices/draft-{drafts['globex']}/finalize", "finance2", idempotency="k")
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers
    assert second.json()["number"] != first.json()["number"]
    # a key whose request still runs: 409 (the row is held, as the API holds it while it works)
    path = f"/v1/invoices/draft-{drafts['initech']}/finalize"
    with api.engine.connect() as conn, conn.begin():
        conn.execute(
            sa.text(
                "INSERT INTO idempotency_keys (key_id, idempotency_key, fingerprint, created_at, "
                "expires_at) VALUES (:k, 'busy', 'x', now(), now() + interval '1 day')"
            ),
            {"k": api.keys["finance"].split("_")[1]},
        )
    with api.engine.connect() as holder, holder.begin():
        holder.execute(sa.text("SELECT 1 FROM idempotency_keys WHERE idempotency_key = 'busy' FOR UPDATE"))
        _problem(api.post(path, idempotency="busy"), 409, "idempotency-key-in-use")
    # … and once it is released without an answer (its process died), a retry runs the request
    assert api.post(path, idempotency="busy").status_code == 422  # 'x' is another request's print
    with api.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM idempotency_keys WHERE idempotency_key = 'busy'"))
    assert api.post(path, idempotency="busy").status_code == 200
    # after 24 h a key is forgotten: the same key runs the request again
    with api.engine.begin() as conn:
        conn.execute(sa.text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    again = api.post(f"/v1/invoices/draft-{drafts['acme']}/finalize", idempotency="k")
    _problem(again, 409, "invoice-state-conflict")
    with api.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT idempotency_key, status FROM idempotency_keys ORDER BY 1")).all()
    # the new claim cleaned the expired keys up (all but its own)
    assert [tuple(r) for r in left] == [("k", 409)]


def test_concurrent_retries_run_the_request_once(api: Api) -> None:
    path = f"/v1/invoices/draft-{_drafts(api.engine)['acme']}/finalize"
    answers: list[httpx.Response] = []

    def go() -> None:
        answers.append(api.post(path, idempotency="race"))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [a for a in answers if a.status_code == 200]
    assert done and all(a.content == done[0].content for a in done)
    assert all(a.status_code in (200, 409) for a in answers)
    for a in answers:
        if a.status_code == 409:
            _problem(a, 409, "idempotency-key-in-use")
    again = api.post(path, idempotency="race")
    assert again.content == done[0].content and again.headers["idempotent-replayed"] == "true"
    with api.engine.connect() as conn:
        numbers = conn.execute(sa.text("SELECT count(*) FROM invoices WHERE number IS NOT NULL")).scalar_one()
    assert numbers == 4  # finalized once


def test_without_a_key_posts_work_as_before(api: Api) -> None:
    first = api.post("/v1/billing/runs", period="2026-12")
    second = api.post("/v1/billing/runs", period="2026-12")
    assert first.status_code == second.status_code == 200 and "idempotent-replayed" not in second.headers
    with api.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM idempotency_keys")).scalar_one() == 0


# --- invoice refs ----------------------------------------------------------------------------


def test_invoice_refs_name_an_invoice_on_every_path(api: Api) -> None:
    draft_id = _drafts(api.engine)["acme"]
    draft = f"draft-{draft_id}"
    view = api.get(f"/v1/invoices/{draft}").json()
    assert view["ref"] == draft and view["status"] == "draft" and view["number"] is None
    assert [i["ref"] for i in api.get("/v1/invoices").json() if i["id"] == draft_id] == [draft]
    _problem(api.get(f"/v1/invoices/{draft}/pdf"), 404, "not-found")  # a draft has no document yet
    # partners: never a draft, never another account's, whatever the ref
    for key in ("acme", "globex"):
        _problem(api.get(f"/v1/invoices/{draft}", key), 404, "not-found")
        _problem(api.get(f"/v1/invoices/{draft}/pdf", key), 404, "not-found")
    for ref in ("draft-0", "draft-01", "draft-99999999999999999999", "DRAFT-1", "draft-", "%231", "1"):
        _problem(api.get(f"/v1/invoices/{ref}"), 404, "not-found")
        _problem(api.post(f"/v1/invoices/{ref}/finalize"), 404, "not-found")
    # an encoded '/' in a ref or period never reaches another operation (a 405 or a redirect)
    for path in ("/v1/invoices/x%2Ffinalize", "/v1/invoices/INV-2026-000001%2fpdf", "/v1/statements/2026-11%2F"):
        r = api.get(path)
        assert (r.status_code, r.headers["content-type"]) == (404, MEDIA_TYPE), (path, r.status_code)
        assert r.json()["type"] == TYPE_BASE + "not-found"
    done = api.post(f"/v1/invoices/{draft}/finalize").json()
    number = done["number"]
    assert done["ref"] == number
    # the draft ref keeps naming it, on every path
    for ref in (draft, number):
        one = api.get(f"/v1/invoices/{ref}").json()
        assert one["id"] == draft_id and one["ref"] == number and one["status"] == "finalized"
        assert api.get(f"/v1/invoices/{ref}", "acme").json()["id"] == draft_id
        _problem(api.get(f"/v1/invoices/{ref}", "globex"), 404, "not-found")
        pdf = api.get(f"/v1/invoices/{ref}/pdf", "acme")
        assert pdf.content.startswith(b"%PDF") and f'filename="{number}.pdf"' in pdf.headers["content-disposition"]
        _problem(api.get(f"/v1/invoices/{ref}/pdf", "globex"), 404, "not-found")
    _problem(api.post(f"/v1/invoices/{number}/finalize"), 409, "invoice-state-conflict")
    voided = api.post(f"/v1/invoices/{draft}/void", reason="wrong plan")
    assert voided.json() == {"ref": number, "number": number, "status": "void"}
    assert api.get(f"/v1/invoices/{number}").json()["status"] == "void"
    # a billing run names each invoice by its ref too
    run = api.post("/v1/billing/runs", period="2026-12").json()
    assert all(r["ref"] == (r["number"] or f"draft-{r['invoice_id']}") for r in run)


# --- client address, metrics -----------------------------------------------------------------


def test_forwarded_for_counts_only_from_a_trusted_proxy(api: Api) -> None:
    def fails(base: str, forwarded: str) -> int:
        headers = {"Authorization": "Bearer stk_bad_guess", "X-Forwarded-For": forwarded}
        return httpx.get(base + "/v1/invoices", headers=headers, timeout=30).status_code

    behind = BillingSettings(api_trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    with running(create_app(api.engine, behind, auth_limit=2)) as base:
        assert [fails(base, "198.51.100.1") for _ in range(3)] == [401, 401, 429]
        assert fails(base, "198.51.100.2") == 401  # another partner behind the same ingress
        assert fails(base, "198.51.100.1, 127.0.0.5") == 429  # through a second trusted hop
    with running(create_app(api.engine, auth_limit=2)) as base:
        # not trusted: a forged header changes nothing, the peer is blocked
        assert [fails(base, f"198.51.100.{i}") for i in range(3)] == [401, 401, 429]


def test_metrics_have_the_latency_histogram_and_the_process(api: Api) -> None:
    for _ in range(3):
        api.get("/v1/invoices/INV-2026-000001")
    api.get("/v1/invoices/INV-2099-000001")
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(api.base + "/metrics", timeout=30).text)}
    hist = fams["streamtoll_http_request_duration_seconds"]
    assert hist.type == "histogram"
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in hist.samples
        if s.name.endswith("_count")
    }
    assert counts[("/v1/invoices/{ref}", "GET", "200")] == 3
    assert counts[("/v1/invoices/{ref}", "GET", "404")] == 1
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["status"] == "200"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 3
    assert fams["process_resident_memory_bytes"].samples[0].value > 10_000_000
    assert fams["process_cpu_seconds"].samples[0].value > 0
