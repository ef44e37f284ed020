"""Loading the catalog (accounts, plans) from YAML into PostgreSQL, idempotently.

* Every mistake in a file is reported at once, each naming the file, the entry and the field;
  a file with any mistake changes nothing (one transaction, validated before writing).
* Loading the same file twice changes nothing: rows are compared before they are written.
* Accounts missing from a later file are kept (they may have invoices); their rules stay too.
* A subscription keeps the plan version it has; a new subscription (another ``starts_on``)
  takes the newest version of its plan and ends an open earlier subscription of the account
  on its start date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert

from billing.adapters.models import AccountRow, ClientRuleRow, PlanRow, PlanVersionRow, SubscriptionRow
from billing.domain.access import access_doc
from billing.domain.accounts import Account, parse_accounts
from billing.domain.plan_documents import _digest, plan_document, plan_from_document
from billing.domain.plans import PlanVersion, parse_plan
from billing.errors import AccountError, CatalogError, PlanError

__all__ = [
    "AccountSummary",
    "LoadReport",
    "PlanSummary",
    "list_accounts",
    "list_plans",
    "load_accounts",
    "load_plans",
    "plan_document",
    "plan_from_document",
    "read_yaml",
]


@dataclass
class LoadReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError([f"{path}: cannot be read ({exc})"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError([f"{path}: {where}not valid YAML ({problem})"]) from None
    except RecursionError:
        raise CatalogError([f"{path}: nested too deeply to be a catalog file"]) from None


def _latest_versions(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(PlanVersionRow.plan_code, PlanVersionRow.version)).all()
    latest: dict[str, int] = {}
    for code, version in rows:
        latest[code] = max(version, latest.get(code, 0))
    return latest


def _account_state(conn: Connection, code: str) -> tuple[Any, list[tuple[Any, ...]]]:
    row = conn.execute(
        select(
            AccountRow.name,
            AccountRow.email,
            AccountRow.currency,
            AccountRow.tax_rate,
            AccountRow.address,
            AccountRow.access,
        ).where(AccountRow.code == code)
    ).first()
    rules = conn.execute(
        select(
            ClientRuleRow.principal,
            ClientRuleRow.client_id,
            ClientRuleRow.virtual_cluster,
            ClientRuleRow.valid_from,
            ClientRuleRow.valid_until,
        )
        .where(ClientRuleRow.account_code == code)
        .order_by(ClientRuleRow.position)
    ).all()
    return (tuple(row) if row is not None else None), [tuple(r) for r in rules]


def load_accounts(engine: Engine, path: Path) -> LoadReport:
    doc = read_yaml(path)
    try:
        accounts = parse_accounts(doc, str(path))
    except AccountError as exc:
        raise CatalogError(exc.problems) from None
    report = LoadReport()
    with engine.begin() as conn:
        latest = _latest_versions(conn)
        missing = [
            f"{path}: accounts[{i}] ({a.code}).subscription.plan: plan {a.subscription.plan!r} is not loaded; "
            "run `streamtoll plans load` first"
            for i, a in enumerate(accounts)
            if a.subscription is not None and a.subscription.plan not in latest
        ]
        if missing:
            raise CatalogError(missing)
        for position, account in enumerate(accounts):
            state = _write_account(conn, account, position)
            subscription_changed = _write_subscription(conn, account, latest)
            if state == "created":
                report.created.append(account.code)
            elif state == "updated" or subscription_changed:
                report.updated.append(account.code)
            else:
                report.unchanged.append(account.code)
    return report


def _write_account(conn: Connection, a: Account, position: int) -> str | None:
    """Write an account and its rules when they differ: "created", "updated" or None."""
    before, rules_before = _account_state(conn, a.code)
    access = None if a.access is None else access_doc(a.access)
    wanted = (a.name, a.email, a.currency, a.tax_rate, list(a.address), access)
    rules = [(r.principal, r.client_id, r.virtual_cluster, r.valid_from, r.valid_until) for r in a.rules]
    if before is not None and before == wanted and rules_before == rules:
        conn.execute(
            update(AccountRow)
            .where(AccountRow.code == a.code, AccountRow.position != position)
            .values(position=position)
        )
        return None
    values = dict(
        zip(("name", "email", "currency", "tax_rate", "address", "access"), wanted, strict=True), position=position
    )
    stmt = insert(AccountRow).values(code=a.code, **values)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["code"], set_={**values, "updated_at": stmt.excluded.updated_at})
    )
    conn.execute(delete(ClientRuleRow).where(ClientRuleRow.account_code == a.code))
    if rules:
        conn.execute(
            insert(ClientRuleRow),
            [
                dict(
                    zip(("principal", "client_id", "virtual_cluster", "valid_from", "valid_until"), r, strict=True),
                    account_code=a.code,
                    position=i,
                )
                for i, r in enumerate(rules)
            ],
        )
    return "created" if before is None else "updated"


def _write_subscription(conn: Connection, a: Account, latest: dict[str, int]) -> bool:
    sub = a.subscription
    if sub is None:
        return False
    existing = conn.execute(
        select(SubscriptionRow.plan_code, SubscriptionRow.ends_on).where(
            SubscriptionRow.account_code == a.code, SubscriptionRow.starts_on == sub.starts_on
        )
    ).first()
    if existing is not None and tuple(existing) == (sub.plan, sub.ends_on):
        return False
    if existing is not None and existing[0] == sub.plan:
        conn.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.account_code == a.code, SubscriptionRow.starts_on == sub.starts_on)
            .values(ends_on=sub.ends_on)
        )
        return True
    # a new subscription (or another plan from the same day): newest plan version
    stmt = insert(SubscriptionRow).values(
        account_code=a.code,
        starts_on=sub.starts_on,
        ends_on=sub.ends_on,
        plan_code=sub.plan,
        plan_version=latest[sub.plan],
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["account_code", "starts_on"],
            set_={"plan_code": sub.plan, "plan_version": latest[sub.plan], "ends_on": sub.ends_on},
        )
    )
    conn.execute(
        update(SubscriptionRow)
        .where(
            SubscriptionRow.account_code == a.code,
            SubscriptionRow.starts_on < sub.starts_on,
            SubscriptionRow.ends_on.is_(None),
        )
        .values(ends_on=sub.starts_on)
    )
    return True


def load_plans(engine: Engine, path: Path) -> LoadReport:
    """Publish each plan of the file: version 1 when new, a new version when it changed."""
    doc = read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("plans"), list):
        raise CatalogError([f"{path}: the top level must be a mapping with a 'plans' list"])
    parsed: list[PlanVersion] = []
    problems: list[str] = []
    for i, entry in enumerate(doc["plans"]):
        if not isinstance(entry, dict):
            problems.append(f"{path}: plans[{i}]: must be a mapping")
            continue
        try:
            parsed.append(parse_plan(entry, f"{path}: plans[{i}]"))
        except PlanError as exc:
            problems.extend(exc.problems)
    seen: set[str] = set()
    for pv in parsed:
        if pv.code in seen:
            problems.append(f"{path}: plan {pv.code!r} appears twice")
        seen.add(pv.code)
    if problems:
        raise CatalogError(problems)
    report = LoadReport()
    with engine.begin() as conn:
        # two loads at once would both pick the same next version number: one waits here
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('streamtoll.plans'))"))
        for pv in parsed:
            document = plan_document(pv)
            digest = _digest(document)
            latest = conn.execute(
                select(PlanVersionRow.version, PlanVersionRow.digest)
                .where(PlanVersionRow.plan_code == pv.code)
                .order_by(PlanVersionRow.version.desc())
                .limit(1)
            ).first()
            if latest is not None and latest.digest == digest:
                report.unchanged.append(pv.code)
                continue
            stmt = insert(PlanRow).values(code=pv.code, name=pv.name)
            conn.execute(stmt.on_conflict_do_update(index_elements=["code"], set_={"name": pv.name}))
            version = 1 if latest is None else latest.version + 1
            conn.execute(
                insert(PlanVersionRow).values(
                    plan_code=pv.code, version=version, currency=pv.currency, document=document, digest=digest
                )
            )
            (report.created if latest is None else report.updated).append(f"{pv.code} v{version}")
    return report


@dataclass(frozen=True)
class AccountSummary:
    code: str
    name: str
    email: str
    currency: str
    tax_rate: Decimal
    client_rules: int
    plan: str | None  # "code v2" of the subscription in force on the day asked, else None


def list_accounts(engine: Engine, on: date) -> list[AccountSummary]:
    """Every account in catalog order, with its rule count and the plan it is subscribed to ``on``."""
    rules = select(ClientRuleRow.account_code, func.count().label("n")).group_by(ClientRuleRow.account_code).subquery()
    sub = SubscriptionRow
    current = and_(
        sub.account_code == AccountRow.code, sub.starts_on <= on, or_(sub.ends_on.is_(None), sub.ends_on > on)
    )
    a = AccountRow
    query = (
        select(a.code, a.name, a.email, a.currency, a.tax_rate, rules.c.n, sub.plan_code, sub.plan_version)
        .outerjoin(rules, rules.c.account_code == AccountRow.code)
        .outerjoin(sub, current)
        .order_by(AccountRow.position, AccountRow.code)
    )
    with engine.connect() as conn:
        return [
            AccountSummary(
                r.code,
                r.name,
                r.email,
                r.currency,
                r.tax_rate,
                r.n or 0,
                None if r.plan_code is None else f"{r.plan_code} v{r.plan_version}",
            )
            for r in conn.execute(query).all()
        ]


@dataclass(frozen=True)
class PlanSummary:
    code: str
    name: str
    latest_version: int
    currency: str
    versions: int


def list_plans(engine: Engine) -> list[PlanSummary]:
    """Every plan with its newest published version."""
    v = PlanVersionRow
    latest = select(v.plan_code, func.max(v.version).label("latest"), func.count().label("n")).group_by(v.plan_code)
    latest_q = latest.subquery()
    query = (
        select(PlanRow.code, PlanRow.name, latest_q.c.latest, latest_q.c.n, v.currency)
        .join(latest_q, latest_q.c.plan_code == PlanRow.code)
        .join(v, and_(v.plan_code == PlanRow.code, v.version == latest_q.c.latest))
        .order_by(PlanRow.code)
    )
    with engine.connect() as conn:
        return [PlanSummary(r.code, r.name, r.latest, r.currency, r.n) for r in conn.execute(query).all()]
