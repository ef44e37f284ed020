"""``/portal``: the partner portal — server-rendered pages (Jinja2) for one partner's account.

Signing in POSTs a partner API key once; after that an HttpOnly, SameSite=Strict session cookie
(:mod:`billing.api.portal_session`) names the key id and account, and every page reads the
account from it and nowhere else (no page takes an account, a key or an id of another account
as input: a credential, invoice or credit note of another account is "not found", as through
the API). Failed sign-ins count against the same per-address limiter as failed bearer keys.
Every POST form carries a CSRF token. The pages call the same use cases the partner API calls
(never the API over HTTP); the expensive ones (overview, usage, downloads) take a slot of the
key's per-key limits like the API's.

Pages: overview (the amount rated so far this month, caps and included volume, limits, access),
usage (per day or hour, by topic, client or direction, a chart drawn by ``chart.js`` over a data
table), throttles and blocks, credentials (create, rotate, revoke; the password shown once with
client configs for confluent-kafka, Java and kcat), billing (statements CSV/PDF, invoice and
credit note PDFs, the prepaid balance where the account has grants), products (the plan's
products, where the partner's subscription to each stands, a product's docs and schemas, a
schema's download; subscribe or request access, cancel — then the entitlements are published,
as the products API does).

Decision where issue 20 is silent: in the portal a partner creates and revokes its own account's
credentials (through the API those need a finance or ops key; the portal's session is a signed-in
person of the partner, and the issue asks for it). Pages are not in ``/openapi.json``.
"""

from __future__ import annotations

import calendar
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import parse_qs

import jinja2
import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from billing.adapters.render import render_statement_pdf
from billing.api.deps import AppServices, Services
from billing.api.limiter import client_address
from billing.api.params import CREDENTIAL_ID_PATTERN, CREDENTIAL_NAME_PATTERN
from billing.api.portal_session import Session
from billing.api.quota import TooMany, key_digest
from billing.errors import (
    AccountNotFound,
    CredentialError,
    CreditNoteError,
    EntitlementNotFound,
    InvoiceError,
    KeyInUse,
    KeyReused,
    ProductError,
    ProductNotFound,
    ProductNotOffered,
    RunError,
)
from billing.services import products
from billing.services.credentials import (
    IssuedCredential,
    create_credential,
    list_credentials,
    revoke_credential,
    rotate_credential,
)
from billing.services.credit_notes import credit_note_pdf, credit_note_view, list_credit_notes
from billing.services.entitlements import entitlement_view
from billing.services.episodes import episodes_between
from billing.services.grants import account_balance
from billing.services.idempotency import claim, fingerprint
from billing.services.invoices import invoice_pdf, invoice_view, list_invoices
from billing.services.keys import Caller, authenticate, caller_by_id
from billing.services.portal import (
    BY,
    CHART_QUANTITIES,
    client_configs,
    partner_product,
    partner_products,
    schema_download,
    usage_chart,
)
from billing.services.statements import statement_csv

__all__ = ["router"]

_ROOT = files("billing") / "templates" / "portal"
_STATIC = {"portal.css": "text/css; charset=utf-8", "chart.js": "text/javascript; charset=utf-8"}
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(_ROOT)),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
# no inline script or style, nothing from another origin, never framed
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_PORTAL_DIGEST = key_digest("portal")  # never a presented key's: the bearer path's early slot never matches it
_OVERLAP = timedelta(hours=24)  # a rotated password stays valid this long (the API's default)
_FORM_LIMIT = 4096

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Partner:
    """Who is signed in: the session and the key's caller (always a partner's, this account's)."""

    session: Session
    caller: Caller

    @property
    def account(self) -> str:
        return self.session.account


def _fmt_int(n: Any) -> str:
    return f"{int(n):,}".replace(",", "\u202f") if n is not None else "—"


def _fmt_bytes(n: Any) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return str(n)


def _fmt_time(iso: str | None) -> str:
    # to the second: 2026-12-07T21:22:47.262Z → 2026-12-07 21:22:47 UTC
    if not iso:
        return "—"
    return iso.split("+")[0].rstrip("Z")[:19].replace("T", " ") + (" UTC" if "T" in iso else "")


def _fmt_duration(seconds: Any) -> str:
    total = int(float(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


_env.filters.update(num=_fmt_int, bytes=_fmt_bytes, when=_fmt_time, duration=_fmt_duration)


def _page(
    request: Request, template: str, status: int = 200, partner: Partner | None = None, **ctx: Any
) -> HTMLResponse:
    s: Services = request.app.state.services
    csrf = s.portal.csrf(partner.session) if partner else ""
    html = _env.get_template(template).render(partner=partner, csrf=csrf, path=request.scope["path"], **ctx)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _script_json(doc: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` (a client id may hold ``</script>``)."""
    text = orjson.dumps(doc).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _who(request: Request, s: Services) -> str:
    return client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        s.settings.api_trusted_proxies,
    )


def _signed_in(request: Request, s: Services) -> Partner | None:
    """The partner whose valid session cookie came with the request (its key still active)."""
    sessions = s.portal
    session = sessions.read(request.cookies.get(sessions.cookie))
    if session is None:
        return None
    found = caller_by_id(s.engine, session.key_id)
    if found is None or found.role != "partner" or found.account != session.account:
        return None  # the key was revoked (or is no longer this account's partner key)
    return Partner(session, found)


def _to_sign_in() -> Response:
    return RedirectResponse("/portal/sign-in", status_code=303, headers=_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); no multipart, at most 4 KiB."""
    body = await request.body()
    if len(body) > _FORM_LIMIT:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


def _refused(request: Request, partner: Partner | None = None) -> HTMLResponse:
    return _page(
        request,
        "error.html",
        403,
        partner,
        title="Form expired",
        message="This form expired or did not come from this portal. Go back, reload the page and try again.",
    )


@contextmanager
def _slot(s: Services, p: Partner) -> Iterator[None]:
    """A slot of the key's per-key limits while an expensive page is built (TooMany when over)."""
    held = s.quota.acquire(p.caller.key_id, p.caller.role, _PORTAL_DIGEST)
    try:
        yield
    finally:
        held.release()


def _busy(request: Request, p: Partner, exc: TooMany) -> HTMLResponse:
    response = _page(
        request,
        "error.html",
        429,
        p,
        title="Too many requests",
        message=f"Too many requests with this key just now; try again in {exc.retry_after} s.",
    )
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _guarded(request: Request, s: Services, work: Callable[[Partner], Response], expensive: bool = False) -> Response:
    p = _signed_in(request, s)
    if p is None:
        return _to_sign_in()
    if not expensive:
        return work(p)
    try:
        with _slot(s, p):
            return work(p)
    except TooMany as exc:
        return _busy(request, p, exc)


# --- static files (served by the app: no CDN, no build step) ---


@router.get("/portal/static/{name}")
def static(name: Annotated[str, Path(pattern=r"^[a-z]+\.(css|js)$")]) -> Response:
    if name not in _STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body = (_ROOT / "static" / name).read_bytes()
    return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})


# --- signing in and out ---


def _sign_in_page(request: Request, s: Services, status: int = 200, error: str | None = None) -> HTMLResponse:
    sessions = s.portal
    nonce = sessions.nonce()
    response = _page(request, "sign_in.html", status, None, nonce=nonce, error=error)
    sessions.set(response, sessions.nonce_cookie, nonce, max_age=1800)
    return response


@router.get("/portal/sign-in")
def sign_in_form(request: Request, s: AppServices) -> Response:
    if _signed_in(request, s) is not None:
        return RedirectResponse("/portal", status_code=303, headers=_HEADERS)
    return _sign_in_page(request, s)


@router.post("/portal/sign-in")
async def sign_in(request: Request, s: AppServices) -> Response:
    sessions = s.portal
    form = await _form(request)
    if not sessions.nonce_ok(request.cookies.get(sessions.nonce_cookie), form.get("csrf")):
        return _refused(request)
    who = _who(request, s)
    wait = s.limiter.retry_after(who)
    if wait:
        response = _sign_in_page(request, s, 429, f"Too many failed sign-ins from this address; try again in {wait} s.")
        response.headers["Retry-After"] = str(wait)
        return response
    presented = form.get("key", "").strip()
    # authenticate() is blocking (a database query): in a worker thread
    found = await run_in_threadpool(authenticate, s.engine, presented) if presented else None
    if found is None:
        s.limiter.failed(who)
        return _sign_in_page(request, s, 401, "That key was not accepted. Check it and try again.")
    if found.role != "partner" or not found.account:
        return _sign_in_page(
            request, s, 403, "The portal is for partner keys; this is a finance or ops key (use the API or /live)."
        )
    done = RedirectResponse("/portal", status_code=303, headers=_HEADERS)
    sessions.set(done, sessions.cookie, sessions.issue(found.key_id, found.account))
    sessions.clear(done, sessions.nonce_cookie)
    return done


@router.post("/portal/sign-out")
async def sign_out(request: Request, s: AppServices) -> Response:
    sessions = s.portal
    form = await _form(request)
    session = sessions.read(request.cookies.get(sessions.cookie))
    if session is None:
        return _to_sign_in()
    if not sessions.csrf_ok(session, form.get("csrf")):
        return _refused(request)
    response = RedirectResponse("/portal/sign-in", status_code=303, headers=_HEADERS)
    sessions.clear(response, sessions.cookie)
    return response


# --- pages ---


def _month_bounds(today: date) -> tuple[date, date]:
    start = today.replace(day=1)
    last = calendar.monthrange(today.year, today.month)[1]
    return start, start + timedelta(days=last)


def _period_of(text: str | None, today: date) -> date:
    """The first day of ``YYYY-MM`` (the current month when absent, malformed or in the future)."""
    if text:
        try:
            year, month = (int(x) for x in text.split("-"))
            first = date(year, month, 1)
            if first <= today and year >= 2000:
                return first
        except ValueError:
            pass
    return today.replace(day=1)


def _months(today: date, n: int = 12) -> list[str]:
    out, y, m = [], today.year, today.month
    for _ in range(n):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out


@router.get("/portal")
def overview(request: Request, s: AppServices) -> Response:
    def work(p: Partner) -> Response:
        now = datetime.now(UTC)
        period = now.strftime("%Y-%m")
        statement = orjson.loads(s.statements.get(p.account, period))
        try:
            entitlement = entitlement_view(s.engine, p.account, now, s.settings.source_order)
        except EntitlementNotFound:
            entitlement = None
        open_episodes = [e for e in (entitlement or {}).get("episodes", []) if e["open"]]
        return _page(
            request,
            "overview.html",
            partner=p,
            title="Overview",
            period=period,
            statement=statement,
            entitlement=entitlement,
            open_episodes=open_episodes,
        )

    return _guarded(request, s, work, expensive=True)


@router.get("/portal/usage")
def usage(
    request: Request,
    s: AppServices,
    period: Annotated[str | None, Query(max_length=7)] = None,
    day: Annotated[str | None, Query(max_length=10)] = None,
    granularity: Annotated[str, Query(max_length=5)] = "day",
    by: Annotated[str, Query(max_length=10)] = "topic",
    quantity: Annotated[str, Query(max_length=10)] = "bytes",
) -> Response:
    def work(p: Partner) -> Response:
        today = datetime.now(UTC).date()
        gran = granularity if granularity in ("day", "hour") else "day"
        group = by if by in BY else "topic"
        what = quantity if quantity in CHART_QUANTITIES else "bytes"
        first = _period_of(period, today)
        if gran == "hour":
            try:
                chosen = date.fromisoformat(day) if day else today
            except ValueError:
                chosen = today
            chosen = min(chosen, today)
            start, end = chosen, chosen + timedelta(days=1)
        else:
            start, end = _month_bounds(first)
            chosen = min(today, end - timedelta(days=1))
        chart = usage_chart(s.engine, p.account, start, end, gran, group, what, s.settings.source_order)
        try:
            entitlement = entitlement_view(s.engine, p.account, source_order=s.settings.source_order)
            caps = [c for c in entitlement["caps"] if c["meter"].endswith("_" + what)]
        except EntitlementNotFound:
            caps = []
        return _page(
            request,
            "usage.html",
            partner=p,
            title="Usage",
            chart=chart,
            chart_json=_script_json(chart.doc()),
            months=_months(today),
            period=first.strftime("%Y-%m"),
            day=chosen.isoformat(),
            # the table stops at the current bucket (the chart keeps the whole range)
            now_key=datetime.now(UTC).strftime("%Y-%m-%dT%H:00Z") if gran == "hour" else today.isoformat(),
            granularity=gran,
            by=group,
            quantity=what,
            quantities=CHART_QUANTITIES,
            groupings=list(BY),
            caps=caps,
        )

    return _guarded(request, s, work, expensive=True)


@router.get("/portal/throttles")
def throttles(request: Request, s: AppServices, period: Annotated[str | None, Query(max_length=7)] = None) -> Response:
    def work(p: Partner) -> Response:
        now = datetime.now(UTC)
        first = _period_of(period, now.date())
        start, end = _month_bounds(first)
        begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
        finish = min(datetime(end.year, end.month, end.day, tzinfo=UTC), now)
        episodes = episodes_between(s.engine, p.account, begin, finish, now) if finish > begin else []
        return _page(
            request,
            "throttles.html",
            partner=p,
            title="Throttles and blocks",
            episodes=list(reversed(episodes)),
            months=_months(now.date()),
            period=first.strftime("%Y-%m"),
        )

    return _guarded(request, s, work)


def _credentials_page(
    request: Request,
    s: Services,
    p: Partner,
    issued: IssuedCredential | None = None,
    action: str = "",
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    views = list_credentials(s.engine, p.account, include_revoked=True)
    st = s.settings
    configs = (
        client_configs(st.portal_gateway_bootstrap, st.portal_security_protocol, issued.username, issued.password)
        if issued
        else None
    )
    examples = {
        v.id: client_configs(st.portal_gateway_bootstrap, st.portal_security_protocol, v.username, None)
        for v in views
        if v.state == "active"
    }
    return _page(
        request,
        "credentials.html",
        status,
        p,
        once=lambda: secrets.token_urlsafe(18),
        title="Credentials",
        credentials=views,
        issued=issued,
        action=action,
        configs=configs,
        examples=examples,
        error=error,
        name_pattern=CREDENTIAL_NAME_PATTERN.strip("^$"),
        bootstrap=st.portal_gateway_bootstrap,
    )


@router.get("/portal/credentials")
def credentials(request: Request, s: AppServices) -> Response:
    return _guarded(request, s, lambda p: _credentials_page(request, s, p))


async def _posted(request: Request, s: Services) -> tuple[Partner | None, dict[str, str], Response | None]:
    """The signed-in partner and the form of a POST, or the answer refusing it."""
    p = await run_in_threadpool(_signed_in, request, s)
    if p is None:
        return None, {}, _to_sign_in()
    form = await _form(request)
    if not s.portal.csrf_ok(p.session, form.get("csrf")):
        return p, form, _refused(request, p)
    return p, form, None


Again = Callable[[Partner, str, str | None, int], Response]  # (partner, action, error, status) → the page


def _once(
    request: Request,
    s: Services,
    p: Partner,
    form: dict[str, str],
    work: Callable[[Partner], Response],
    again: Again | None = None,
) -> Response:
    """``work(p)`` once per form: each credential or product form carries a random ``once`` token,
    held as an idempotency key of the partner's API key (``billing.services.idempotency``), so a
    form sent twice (a double click, a reload after a lost answer) changes nothing the second
    time. Only the fact that it ran is kept — never a page with a password. ``again`` draws the
    form's page when the work is not done (default: the credentials page)."""

    def page(action: str = "", error: str | None = None, status: int = 200) -> Response:
        if again is not None:
            return again(p, action, error, status)
        return _credentials_page(request, s, p, action=action, error=error, status=status)

    token = form.get("once", "")
    if not 16 <= len(token) <= 64:
        return page(error="This form is out of date; reload the page.", status=400)
    print_ = fingerprint("POST", request.scope["path"], [], b"")
    try:
        with claim(s.engine, p.caller.key_id, "portal:" + token, print_) as held:
            if held.answer is not None:
                return page(action="replayed")
            response = work(p)
            if response.status_code < 500:
                held.complete(response.status_code, [], b"")
            return response
    except KeyInUse:
        return page(error="This form is being sent already; reload in a moment.", status=409)
    except KeyReused:
        return page(error="This form was used for something else; reload the page.", status=409)


def _own_active(s: Services, p: Partner, credential_id: str) -> bool:
    return any(v.id == credential_id and v.state == "active" for v in list_credentials(s.engine, p.account))


@router.post("/portal/credentials")
async def create(request: Request, s: AppServices) -> Response:
    p, form, refusal = await _posted(request, s)
    if refusal is not None or p is None:
        return refusal or _to_sign_in()
    name = form.get("name", "").strip() or None

    def work(partner: Partner) -> Response:
        try:
            issued = create_credential(s.engine, partner.account, name)
        except CredentialError as exc:
            return _credentials_page(request, s, partner, error=str(exc).replace("--name", "The name"), status=422)
        s.published()
        return _credentials_page(request, s, partner, issued, "created")

    return await run_in_threadpool(_once, request, s, p, form, work)


async def _on_own_credential(
    request: Request, s: Services, credential_id: str, act: Callable[[], IssuedCredential | None], action: str
) -> Response:
    """Rotate or revoke one of the partner's own active credentials (``act``), once per form."""
    p, form, refusal = await _posted(request, s)
    if refusal is not None or p is None:
        return refusal or _to_sign_in()

    def work(partner: Partner) -> Response:
        gone = "There is no such active credential."
        if not _own_active(s, partner, credential_id):
            return _credentials_page(request, s, partner, error=gone, status=404)
        try:
            issued = act()
        except CredentialError:
            return _credentials_page(request, s, partner, error=gone, status=404)
        s.published()
        return _credentials_page(request, s, partner, issued, action)

    return await run_in_threadpool(_once, request, s, p, form, work)


@router.post("/portal/credentials/{credential_id}/rotate")
async def rotate(
    request: Request, s: AppServices, credential_id: Annotated[str, Path(pattern=CREDENTIAL_ID_PATTERN)]
) -> Response:
    return await _on_own_credential(
        request, s, credential_id, lambda: rotate_credential(s.engine, credential_id, _OVERLAP), "rotated"
    )


@router.post("/portal/credentials/{credential_id}/revoke")
async def revoke(
    request: Request, s: AppServices, credential_id: Annotated[str, Path(pattern=CREDENTIAL_ID_PATTERN)]
) -> Response:
    def act() -> None:
        revoke_credential(s.engine, credential_id)

    return await _on_own_credential(request, s, credential_id, act, "revoked")


@router.get("/portal/billing")
def billing(request: Request, s: AppServices) -> Response:
    def work(p: Partner) -> Response:
        today = datetime.now(UTC).date()
        invoices = list(reversed(list_invoices(s.engine, None, p.account, drafts=False)))
        notes = list(reversed(list_credit_notes(s.engine, p.account)))
        try:
            balance = account_balance(s.engine, p.account, today)
        except AccountNotFound:
            balance = None
        return _page(
            request,
            "billing.html",
            partner=p,
            title="Billing",
            months=_months(today),
            invoices=invoices,
            credit_notes=notes,
            balance=balance if balance and balance["grants"] else None,  # no grants: nothing shown
        )

    return _guarded(request, s, work)


def _not_found(request: Request, p: Partner, what: str) -> HTMLResponse:
    return _page(request, "error.html", 404, p, title="Not found", message=f"There is no such {what}.")


def _download(body: bytes, media: str, filename: str) -> Response:
    return Response(
        body,
        media_type=media,
        headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/portal/statements/{name}")
def statement_file(
    request: Request, s: AppServices, name: Annotated[str, Path(pattern=r"^[0-9]{4}-[0-9]{2}\.(csv|pdf)$")]
) -> Response:
    def work(p: Partner) -> Response:
        period, kind = name.split(".")
        today = datetime.now(UTC).date()
        try:
            year, month = (int(x) for x in period.split("-"))
            if not 1 <= month <= 12 or date(year, month, 1) > today:
                return _not_found(request, p, "statement")
            if kind == "pdf":
                document = s.statements.pdf(p.account, period, render_statement_pdf)
                return _download(document, "application/pdf", f"statement-{p.account}-{period}.pdf")
            body = s.statements.get(p.account, period)
        except (RunError, ValueError):
            return _not_found(request, p, "statement")
        csv = statement_csv(orjson.loads(body))
        return _download(csv.encode(), "text/csv; charset=utf-8", f"statement-{p.account}-{period}.csv")

    return _guarded(request, s, work, expensive=True)


@router.get("/portal/invoices/{ref}.pdf")
def invoice_file(
    request: Request, s: AppServices, ref: Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")]
) -> Response:
    def work(p: Partner) -> Response:
        try:
            doc = invoice_view(s.engine, ref)
            if doc["account"]["code"] != p.account or doc["status"] == "draft":
                return _not_found(request, p, "invoice")  # the same answer as for one that does not exist
            return _download(invoice_pdf(s.engine, ref), "application/pdf", f"{doc['number']}.pdf")
        except InvoiceError:
            return _not_found(request, p, "invoice")

    return _guarded(request, s, work, expensive=True)


@router.get("/portal/credit-notes/{number}.pdf")
def credit_note_file(
    request: Request, s: AppServices, number: Annotated[str, Path(pattern=r"^CN-[0-9]{4}-[0-9]{4,9}$")]
) -> Response:
    def work(p: Partner) -> Response:
        try:
            doc = credit_note_view(s.engine, number)
            if doc["account"] != p.account:
                return _not_found(request, p, "credit note")
            return _download(credit_note_pdf(s.engine, number), "application/pdf", f"{number}.pdf")
        except CreditNoteError:
            return _not_found(request, p, "credit note")

    return _guarded(request, s, work, expensive=True)


# --- products ---

ProductCode = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
Version = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


def _products_page(request: Request, s: Services, p: Partner, action: str = "") -> Response:
    try:
        items = partner_products(s.engine, p.account)
    except ProductNotFound:
        items = []
    return _page(
        request,
        "products.html",
        partner=p,
        title="Products",
        products=items,
        group_prefix=p.account + "-",
        action=action,
    )


@router.get("/portal/products")
def product_list(request: Request, s: AppServices) -> Response:
    return _guarded(request, s, lambda p: _products_page(request, s, p))


def _product_page(
    request: Request,
    s: Services,
    p: Partner,
    code: str,
    version: int | None = None,
    action: str = "",
    error: str | None = None,
    status: int = 200,
) -> Response:
    try:
        doc = partner_product(s.engine, p.account, code, version)
    except ProductNotFound:
        return _not_found(request, p, "product")
    return _page(
        request,
        "product.html",
        status,
        p,
        once=lambda: secrets.token_urlsafe(18),
        title=doc["name"],
        product=doc,
        action=action,
        error=error,
        group_prefix=p.account + "-",
        query="" if version is None else f"?version={version}",
    )


@router.get("/portal/products/{code}")
def product_page(request: Request, s: AppServices, code: ProductCode, version: Version = None) -> Response:
    return _guarded(request, s, lambda p: _product_page(request, s, p, code, version))


@router.get("/portal/products/{code}/schemas/{index}")
def schema_file(
    request: Request,
    s: AppServices,
    code: ProductCode,
    index: Annotated[int, Path(ge=0, le=999)],
    version: Version = None,
) -> Response:
    def work(p: Partner) -> Response:
        try:
            found = schema_download(partner_product(s.engine, p.account, code, version), index)
        except ProductNotFound:
            found = None
        if found is None:
            return _not_found(request, p, "schema")
        filename, media, text = found
        return _download(text.encode(), media, filename)

    return _guarded(request, s, work)


def _product_again(request: Request, s: Services, code: str) -> Again:
    return lambda p, action, error, status: _product_page(request, s, p, code, None, action, error, status)


@router.post("/portal/products/{code}/subscribe")
async def subscribe(request: Request, s: AppServices, code: ProductCode) -> Response:
    """Subscribe (self-service: active at once) or request access (needs approval), as the
    partner's key does through ``POST /v1/products/{code}/subscriptions``; the entitlements are
    then published so the gateways grant the product's topics."""
    p, form, refusal = await _posted(request, s)
    if refusal is not None or p is None:
        return refusal or _to_sign_in()
    again = _product_again(request, s, code)

    def work(partner: Partner) -> Response:
        try:
            sub = products.subscribe(s.engine, partner.account, code, f"partner:{partner.caller.key_id}")
        except (ProductNotFound, ProductNotOffered):
            return _not_found(request, partner, "product")  # not offered to it: as absent (as the API)
        except ProductError as exc:
            return again(partner, "", str(exc), 409)
        s.published_entitlements()
        return again(partner, "subscribed" if sub["status"] == "active" else "requested", None, 200)

    return await run_in_threadpool(_once, request, s, p, form, work, again)


@router.post("/portal/products/{code}/unsubscribe")
async def unsubscribe(request: Request, s: AppServices, code: ProductCode) -> Response:
    """Cancel the partner's subscription (or withdraw its request); the entitlements are published."""
    p, form, refusal = await _posted(request, s)
    if refusal is not None or p is None:
        return refusal or _to_sign_in()
    again = _product_again(request, s, code)

    def work(partner: Partner) -> Response:
        try:
            products.unsubscribe(s.engine, partner.account, code, f"partner:{partner.caller.key_id}")
        except ProductError:
            return _not_found(request, partner, "subscription")
        s.published_entitlements()
        response = again(partner, "cancelled", None, 200)
        if response.status_code == 404:  # no longer in its plan, now not subscribed either: gone from view
            return _products_page(request, s, partner, "cancelled")
        return response

    return await run_in_threadpool(_once, request, s, p, form, work, again)
