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
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.domain.access import access_doc
from billing.domain.accounts import Account, parse_accounts
from billing.domain.plan_documents import document_digest, plan_document, plan_from_document
from billing.domain.plans import PlanVersion, parse_plan
from billing.errors import AccountError, CatalogError, PlanError
from billing.services.ports import (
    AccountState,
    AccountSummary,
    CatalogReads,
    CatalogWrites,
    ClientRuleState,
    PlanSummary,
)

__all__ = [
    "AccountSummary",
    "LoadReport",
    "PlanSummary",
    "list_accounts",
    "list_plans",
    "load_accounts",
    "load_plans",
    "parse_plans",
    "plan_document",
    "plan_from_document",
    "publish_plans",
    "read_yaml",
    "write_accounts",
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


def load_accounts(engine: Engine, path: Path) -> LoadReport:
    doc = read_yaml(path)
    try:
        accounts = parse_accounts(doc, str(path))
    except AccountError as exc:
        raise CatalogError(exc.problems) from None
    with UnitOfWork(engine) as uow:
        return write_accounts(uow.catalog, accounts, str(path))


def write_accounts(catalog: CatalogWrites, accounts: list[Account], source: str) -> LoadReport:
    """Write the accounts of the file ``source`` (in one transaction: the caller's)."""
    latest = catalog.latest_versions()
    missing = [
        f"{source}: accounts[{i}] ({a.code}).subscription.plan: plan {a.subscription.plan!r} is not loaded; "
        "run `streamtoll plans load` first"
        for i, a in enumerate(accounts)
        if a.subscription is not None and a.subscription.plan not in latest
    ]
    if missing:
        raise CatalogError(missing)
    report = LoadReport()
    for position, account in enumerate(accounts):
        state = _write_account(catalog, account, position)
        subscription_changed = _write_subscription(catalog, account, latest)
        if state == "created":
            report.created.append(account.code)
        elif state == "updated" or subscription_changed:
            report.updated.append(account.code)
        else:
            report.unchanged.append(account.code)
    return report


def _write_account(catalog: CatalogWrites, a: Account, position: int) -> str | None:
    """Write an account and its rules when they differ: "created", "updated" or None."""
    before, rules_before = catalog.account_state(a.code)
    access = None if a.access is None else access_doc(a.access)
    wanted = AccountState(a.name, a.email, a.currency, a.tax_rate, tuple(a.address), access)
    rules = [ClientRuleState(r.principal, r.client_id, r.virtual_cluster, r.valid_from, r.valid_until) for r in a.rules]
    if before is not None and before == wanted and rules_before == rules:
        catalog.move_account(a.code, position)
        return None
    catalog.put_account(a.code, wanted, position, rules)
    return "created" if before is None else "updated"


def _write_subscription(catalog: CatalogWrites, a: Account, latest: dict[str, int]) -> bool:
    sub = a.subscription
    if sub is None:
        return False
    existing = catalog.subscription(a.code, sub.starts_on)
    if existing is not None and existing == (sub.plan, sub.ends_on):
        return False
    if existing is not None and existing[0] == sub.plan:
        catalog.end_subscription(a.code, sub.starts_on, sub.ends_on)
        return True
    # a new subscription (or another plan from the same day): newest plan version
    catalog.start_subscription(a.code, sub.starts_on, sub.ends_on, sub.plan, latest[sub.plan])
    return True


def parse_plans(doc: Any, source: str) -> list[PlanVersion]:
    """The plans of a catalog file ``source``; every mistake at once (:class:`CatalogError`)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("plans"), list):
        raise CatalogError([f"{source}: the top level must be a mapping with a 'plans' list"])
    parsed: list[PlanVersion] = []
    problems: list[str] = []
    for i, entry in enumerate(doc["plans"]):
        if not isinstance(entry, dict):
            problems.append(f"{source}: plans[{i}]: must be a mapping")
            continue
        try:
            parsed.append(parse_plan(entry, f"{source}: plans[{i}]"))
        except PlanError as exc:
            problems.extend(exc.problems)
    seen: set[str] = set()
    for pv in parsed:
        if pv.code in seen:
            problems.append(f"{source}: plan {pv.code!r} appears twice")
        seen.add(pv.code)
    if problems:
        raise CatalogError(problems)
    return parsed


def publish_plans(catalog: CatalogWrites, plans: list[PlanVersion]) -> LoadReport:
    """Publish each plan: version 1 when new, a new version when its document changed."""
    report = LoadReport()
    catalog.lock_plans()
    for pv in plans:
        document = plan_document(pv)
        digest = document_digest(document)
        head = catalog.plan_head(pv.code)
        if head is not None and head.digest == digest:
            report.unchanged.append(pv.code)
            continue
        version = 1 if head is None else head.version + 1
        catalog.publish_plan(pv.code, pv.name, version, pv.currency, document, digest)
        (report.created if head is None else report.updated).append(f"{pv.code} v{version}")
    return report


def load_plans(engine: Engine, path: Path) -> LoadReport:
    """Publish each plan of the file: version 1 when new, a new version when it changed."""
    plans = parse_plans(read_yaml(path), str(path))
    with UnitOfWork(engine) as uow:
        return publish_plans(uow.catalog, plans)


def list_accounts(engine: Engine, on: date) -> list[AccountSummary]:
    """Every account in catalog order, with its rule count and the plan it is subscribed to ``on``."""
    with UnitOfWork(engine) as uow:
        catalog: CatalogReads = uow.catalog
        return catalog.account_summaries(on)


def list_plans(engine: Engine) -> list[PlanSummary]:
    """Every plan with its newest published version."""
    with UnitOfWork(engine) as uow:
        catalog: CatalogReads = uow.catalog
        return catalog.plan_summaries()
