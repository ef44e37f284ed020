"""A shadow run: a past period rated under a candidate plan beside the real invoices, writing nothing.

``streamtoll bill --period 2026-10 --shadow --plan CANDIDATE [--plan-file FILE] [--accounts a,b]``.
The candidate is a plan of the catalog (``growth``: its newest version; ``growth@2``: version 2),
or, with ``plan_file``, a plan of a plans YAML file that is not loaded (validated as
``streamtoll plans load`` would, then only read): what sales tries before publishing a price change.

Everything is read in one unit of work that cannot write (:func:`billing.adapters.uow.read_only`:
a ``READ ONLY`` transaction on PostgreSQL) and rated by the billing run's rules; the rules of the
comparison are :mod:`billing.domain.shadow`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

from billing.adapters.uow import Database, read_only
from billing.domain.invoicing import Subscription, active_subscriptions
from billing.domain.plans import PlanVersion
from billing.domain.rating import Totals
from billing.domain.shadow import RealBill, ShadowBill, rate_real, shadow_bill
from billing.domain.sources import DEFAULT_SOURCES
from billing.domain.usage import metered_by_source
from billing.errors import AccountNotFound, PlanNotFound, RunError
from billing.services.billing_run import parse_period
from billing.services.catalog import parse_plans, read_yaml
from billing.services.invoices import invoice_ref
from billing.services.ports import InvoiceRecord, InvoiceRepository

__all__ = ["candidate_plan", "shadow_run"]


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), UTC)


def candidate_plan(
    spec: str,
    catalog: Mapping[tuple[str, int], PlanVersion],
    from_file: Mapping[str, PlanVersion] | None = None,
    file_name: str = "the plans file",
) -> tuple[PlanVersion, str]:
    """The plan version ``spec`` names (``CODE`` or ``CODE@VERSION``) and its label (``growth v2``,
    ``growth (plans-candidate.yaml)``): in ``from_file`` (the plans of ``file_name``) when given,
    where a plan has no version yet, else in the catalog."""
    code, at, version = spec.partition("@")
    if from_file is not None:
        if at:
            raise RunError(f"plan {spec!r}: a plan of {file_name} has no version yet; name it by its code alone")
        if code not in from_file:
            raise PlanNotFound(f"{file_name} has no plan {code!r} (it has {', '.join(sorted(from_file)) or 'none'})")
        return from_file[code], f"{code} ({file_name})"
    versions = sorted(v for c, v in catalog if c == code)
    if not versions:
        raise PlanNotFound(f"there is no plan {code!r} in the catalog")
    if not at:
        return catalog[(code, versions[-1])], f"{code} v{versions[-1]}"
    if not (version.isascii() and version.isdigit()) or int(version) not in versions:
        raise PlanNotFound(f"plan {code!r} has no version {version!r} (it has v{versions[0]} to v{versions[-1]})")
    return catalog[(code, int(version))], f"{code} v{int(version)}"


def _real_invoice(invoices: InvoiceRepository, inv: InvoiceRecord) -> RealBill:
    # threshold invoices' deductions too (billing.domain.progressive): what the period's final
    # invoice would be under the candidate, so the difference is still the candidate's alone
    carried = ("adjustment", "threshold")
    adjustments = tuple(Decimal(line["amount"]) for line in invoices.lines(inv.id) if line["kind"] in carried)
    totals = Totals(inv.subtotal, inv.tax, inv.total)
    return RealBill(inv.status, inv.currency, inv.tax_rate, totals, adjustments, invoice_ref(inv.id, inv.number))


def shadow_run(
    db: Database,
    period: str,
    plan: str,
    accounts: Sequence[str] | None = None,
    plan_file: Path | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> list[ShadowBill]:
    """Per account (``accounts``, or every account a billing run of ``period`` bills), the real
    total beside the total under the candidate ``plan``. Writes nothing."""
    start, end = parse_period(period)
    order = source_order or DEFAULT_SOURCES
    from_file = None if plan_file is None else {p.code: p for p in parse_plans(read_yaml(plan_file), str(plan_file))}
    with read_only(db)() as uow:
        terms = uow.catalog.accounts()
        plans = uow.catalog.plan_versions()
        candidate, label = candidate_plan(plan, plans, from_file, str(plan_file))
        unknown = [a for a in accounts or () if a not in terms]
        if unknown:
            raise AccountNotFound(f"there is no account {', '.join(repr(a) for a in unknown)}")
        subscriptions: dict[str, list[Subscription]] = {}
        for s in uow.catalog.subscriptions():
            subscriptions.setdefault(s.account, []).append(s)
        rows = uow.usage.rows(_midnight(start), _midnight(end), uow.catalog.attributor())
        usage = metered_by_source(r for r in rows if r.account in terms)
        if not usage:
            raise RunError(f"there is no usage in {period}: a shadow run has nothing to compare")

        def active(account: str) -> list[tuple[date, date | None, PlanVersion]]:
            return active_subscriptions(subscriptions.get(account, []), plans, start, end)

        chosen = sorted(set(accounts)) if accounts else sorted({a for a in terms if active(a)} | set(usage))
        live = {
            r.account_code: r
            for r in uow.invoices.listing(start, None, None, True, None, None)
            if r.kind == "standard" and r.status != "void"
        }
        out: list[ShadowBill] = []
        for account in chosen:
            by_source, subscribed = usage.get(account, {}), active(account)
            inv = live.get(account)
            acct = terms[account]
            real = (
                _real_invoice(uow.invoices, inv)
                if inv is not None
                else rate_real(by_source, subscribed, start, end, acct.currency, acct.tax_rate, order)
            )
            out.append(shadow_bill(account, by_source, subscribed, candidate, label, start, end, real, order))
        return out
