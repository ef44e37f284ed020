"""In-memory fakes of billing's repositories and unit of work (billing.services.ports), for unit
tests of the services without PostgreSQL. They keep the contracts the SQL repositories keep
(filters, order, what counts as finalized), not their locks; a unit of work commits nothing and
rolls nothing back (the fakes write through)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from billing.domain.accounts import Attributor, ClientRule
from billing.domain.credit_notes import OpenCredit
from billing.domain.grants import Grant, RecordedBurn
from billing.domain.invoicing import AccountTerms, PricedLine, Subscription
from billing.domain.plans import PlanVersion
from billing.domain.progressive import ThresholdInvoiced
from billing.domain.usage import UsageRow
from billing.domain.webhooks import WebhookEvent
from billing.errors import AmendmentNotFound, CreditNoteNotFound, GrantError, GrantNotFound, InvoiceNotFound
from billing.services.ports import (
    AmendmentRecord,
    CreditNoteRecord,
    DraftValues,
    FinalizedPeriod,
    GrantRecord,
    InvoiceRecord,
    ProductSubscription,
    ProductVersionRecord,
    StatementMarks,
)

GB = 10**9
_NOT_OWN = ("adjustment", "credit_note", "threshold", "grant")  # lines an invoice carries that are not its period's own


def row(  # a usage row of one identity of `account` on `day`, topic "orders" unless given
    account: str, source: str, day: date, *, bytes_: int = 0, records: int = 0, requests: int = 0, topic: str = "orders"
) -> UsageRow:
    return UsageRow(
        source=source,
        account=account,
        principal=f"User:{account}",
        client_id="app",
        virtual_cluster="",
        topic=topic,
        direction="produce",
        hour=datetime(day.year, day.month, day.day, tzinfo=UTC),
        day=day,
        bytes=bytes_,
        records=records,
        requests=requests,
        denied_requests=0,
    )


class FakeUsage:
    def __init__(self, rows: list[UsageRow] | None = None) -> None:
        self.stored: list[UsageRow] = list(rows or [])

    def rows(
        self, start: datetime, end: datetime, attributor: Attributor, account: str | None = None, hourly: bool = False
    ) -> list[UsageRow]:
        return [r for r in self.stored if start <= r.hour < end and account in (None, r.account)]

    def account_groups(
        self,
        attributor: Attributor,
        account: str,
        start: date,
        end: date,
        groupings: dict[str, tuple[tuple[str, ...], int]],
    ) -> dict[str, list[dict[str, Any]]]:
        raise NotImplementedError

    def account_report(
        self, attributor: Attributor, account: str, start: datetime, end: datetime, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        raise NotImplementedError


class FakeCatalog:
    def __init__(self) -> None:
        self.terms: dict[str, AccountTerms] = {}
        self.plans: dict[tuple[str, int], PlanVersion] = {}
        self.subs: list[Subscription] = []
        self.rules: list[tuple[str, ClientRule]] = []  # (account, rule): attributor()'s, in order

    def add_account(self, code: str, currency: str = "EUR", tax_rate: str = "0") -> None:
        self.terms[code] = AccountTerms(code, currency, Decimal(tax_rate), f"{code} Ltd", f"{code}@example.com")

    def subscribe(self, account: str, plan: PlanVersion, starts_on: date, ends_on: date | None = None) -> None:
        self.plans[(plan.code, plan.version)] = plan
        self.subs.append(Subscription(account, starts_on, ends_on, plan.code, plan.version))
        self.subs.sort(key=lambda s: s.starts_on)

    def accounts(self) -> dict[str, AccountTerms]:
        return dict(self.terms)

    def account(self, code: str) -> AccountTerms:
        return self.terms[code]

    def plan_versions(self) -> dict[tuple[str, int], PlanVersion]:
        return dict(self.plans)

    def subscriptions(self) -> list[Subscription]:
        return list(self.subs)

    def attributor(self) -> Attributor:
        return Attributor(self.rules)


@dataclasses.dataclass
class StoredInvoice:
    record: InvoiceRecord
    lines: list[PricedLine]


class FakeInvoices:
    def __init__(self) -> None:
        self.stored: dict[int, StoredInvoice] = {}
        self.numbers: dict[tuple[str, int], int] = {}
        self.locks: list[tuple[str, date]] = []
        self.documents: dict[int, tuple[str, bytes]] = {}

    # what a test sets up or looks at
    def of(self, account: str, period_start: date) -> list[StoredInvoice]:
        return [
            s
            for s in self.stored.values()
            if s.record.account_code == account and s.record.period_start == period_start
        ]

    def set_status(self, invoice_id: int, status: str, number: str | None = None) -> None:
        s = self.stored[invoice_id]
        s.record = dataclasses.replace(s.record, status=status, number=number or s.record.number)

    # the port
    def lock_run(self, account: str, period_start: date) -> None:
        self.locks.append((account, period_start))

    def current(self, account: str, period_start: date) -> InvoiceRecord | None:
        for s in self.of(account, period_start):
            if s.record.kind == "standard" and s.record.status != "void":
                return s.record
        return None

    def insert_draft(self, account: str, start: date, end: date, values: DraftValues, kind: str = "standard") -> int:
        invoice_id = len(self.stored) + 1
        fields = {k: v for k, v in dataclasses.asdict(values).items() if k != "updated_at"}
        record = InvoiceRecord(invoice_id, account, start, end, kind, "draft", None, **fields)
        self.stored[invoice_id] = StoredInvoice(record, [])
        return invoice_id

    def update_draft(self, invoice_id: int, values: DraftValues) -> None:
        s = self.stored[invoice_id]
        fields = {k: v for k, v in dataclasses.asdict(values).items() if k != "updated_at"}
        s.record = dataclasses.replace(s.record, **fields)

    def replace_lines(self, invoice_id: int, lines: Sequence[PricedLine], start: date, end: date) -> int:
        self.stored[invoice_id].lines = list(lines)
        return len(lines)

    def finalized_periods(self, account: str, before: date) -> list[FinalizedPeriod]:
        out = [
            FinalizedPeriod(
                s.record.period_start,
                s.record.period_end,
                str(s.record.number),
                sum(
                    (p.line.rounded_amount for p in s.lines if p.line.kind not in _NOT_OWN),
                    Decimal(0),
                ),
            )
            for s in self.stored.values()
            if s.record.account_code == account
            and s.record.status == "finalized"
            and s.record.kind == "standard"
            and s.record.period_start < before
        ]
        return sorted(out, key=lambda f: f.period_start)

    def threshold_invoices(self, account: str, period_start: date) -> list[ThresholdInvoiced]:
        return [
            ThresholdInvoiced(str(s.record.number), s.record.subtotal)
            for s in self.of(account, period_start)
            if s.record.kind == "threshold" and s.record.status == "finalized"
        ]

    def finalized_adjustments(self, account: str, period: str) -> Decimal:
        return sum(
            (
                p.line.rounded_amount
                for s in self.stored.values()
                if s.record.account_code == account and s.record.status == "finalized"
                for p in s.lines
                if p.line.kind == "adjustment" and (p.adjusts or {}).get("adjusts_period") == period
            ),
            Decimal(0),
        )

    def find(self, ref: str | int, for_update: bool = False) -> InvoiceRecord:
        for s in self.stored.values():
            if ref in (s.record.id, f"draft-{s.record.id}") or (s.record.number is not None and ref == s.record.number):
                pdf = self.documents.get(s.record.id, (None, None))[1]
                return dataclasses.replace(s.record, pdf=pdf)
        raise InvoiceNotFound(f"there is no invoice {ref}")

    def lines(self, invoice_id: int) -> list[dict[str, Any]]:
        return [
            {
                "position": i,
                "kind": p.line.kind,
                "description": p.line.description,
                "meter": p.line.meter,
                "source": p.source,
                "topics": list(p.line.topics),
                "quantity": p.line.quantity_raw,
                "unit": p.line.unit,
                "model": p.line.model,
                "amount_unrounded": p.line.unrounded_amount,
                "amount": p.line.rounded_amount,
                "breakdown": [],
                "usage_ref": p.adjusts or {},
            }
            for i, p in enumerate(self.stored[invoice_id].lines)
        ]

    def allocate_number(self, prefix: str, year: int) -> str:
        last = self.numbers[(prefix, year)] = self.numbers.get((prefix, year), 0) + 1
        return f"{prefix}-{year}-{last:06d}"

    def mark_finalized(
        self,
        invoice_id: int,
        number: str,
        snapshot: dict[str, Any],
        html: str | None,
        pdf: bytes | None,
        issued: date,
        due: date,
        now: datetime,
    ) -> None:
        s = self.stored[invoice_id]
        s.record = dataclasses.replace(s.record, status="finalized", number=number, snapshot=snapshot)

    def mark_void(self, invoice_id: int, reason: str, now: datetime) -> None:
        s = self.stored[invoice_id]
        s.record = dataclasses.replace(s.record, status="void", void_reason=reason)

    def listing(
        self,
        period_start: date | None,
        account: str | None,
        status: str | None,
        drafts: bool,
        after: tuple[date, str, int] | None,
        limit: int | None,
    ) -> list[InvoiceRecord]:
        rows = sorted((s.record for s in self.stored.values()), key=lambda r: (r.period_start, r.account_code, r.id))
        rows = [
            r
            for r in rows
            if (after is None or (r.period_start, r.account_code, r.id) > after)
            and (drafts or r.status != "draft")
            and period_start in (None, r.period_start)
            and account in (None, r.account_code)
            and status in (None, r.status)
        ]
        return rows if limit is None else rows[:limit]

    def ids_not_draft(self, period_start: date) -> list[int]:
        return [
            i for i, s in self.stored.items() if s.record.period_start == period_start and s.record.status != "draft"
        ]

    def without_documents(self, invoice_ids: list[int] | None) -> list[tuple[int, dict[str, Any]]]:
        return [
            (i, s.record.snapshot or {})
            for i, s in self.stored.items()
            if s.record.status == "finalized" and i not in self.documents and (invoice_ids is None or i in invoice_ids)
        ]

    def store_documents(self, invoice_id: int, html: str, pdf: bytes) -> int:
        if invoice_id in self.documents:
            return 0
        self.documents[invoice_id] = (html, pdf)
        return 1


class FakeStatements:
    def marks(self, account: str, period: str, month: date, with_pdf: bool) -> StatementMarks:
        raise NotImplementedError

    def store(
        self,
        account: str,
        period: str,
        usage_mark: int,
        catalog_mark: int | None,
        doc_version: int,
        sources: str,
        computed_at: datetime,
        body: str,
    ) -> int | None:
        raise NotImplementedError

    def stored_pdf(self, account: str, period: str, revision: int) -> bytes | None:
        raise NotImplementedError

    def keep_pdf(self, account: str, period: str, revision: int, pdf: bytes) -> None:
        raise NotImplementedError


class FakeCreditNotes:
    def __init__(self, invoices: FakeInvoices) -> None:
        self.invoices = invoices
        self.stored: list[CreditNoteRecord] = []
        self.numbers: dict[int, int] = {}
        self.locked: list[str] = []

    def lock_open_credits(self, account: str) -> None:
        self.locked.append(account)

    def allocate_number(self, year: int) -> int:
        last = self.numbers[year] = self.numbers.get(year, 0) + 1
        return last

    def credited(self, invoice_id: int) -> tuple[Decimal, Decimal]:
        mine = [c for c in self.stored if c.invoice_id == invoice_id]
        return sum((c.total for c in mine), Decimal(0)), sum((c.tax for c in mine), Decimal(0))

    def insert(self, record: CreditNoteRecord) -> int:
        credit_id = len(self.stored) + 1
        self.stored.append(dataclasses.replace(record, id=credit_id))
        return credit_id

    def find(self, number: str) -> CreditNoteRecord:
        for c in self.stored:
            if c.number == number:
                return c
        raise CreditNoteNotFound(f"there is no credit note {number}")

    def listing(self, account: str | None, invoice_id: int | None) -> list[CreditNoteRecord]:
        return [c for c in self.stored if account in (None, c.account_code) and invoice_id in (None, c.invoice_id)]

    def open_credits(self, account: str, before: date, invoice_id: int | None) -> list[OpenCredit]:
        out = []
        for c in self.stored:
            credited = self.invoices.stored[c.invoice_id].record
            if c.account_code != account or c.settlement != "credit" or credited.period_start >= before:
                continue
            applied = sum(
                (
                    -p.line.rounded_amount
                    for i, s in self.invoices.stored.items()
                    if s.record.status != "void" and i != invoice_id
                    for p in s.lines
                    if p.line.kind == "credit_note" and (p.adjusts or {}).get("credit_note") == c.number
                ),
                Decimal(0),
            )
            if c.net - applied > 0:
                out.append(OpenCredit(c.number, c.net - applied))
        return out


class FakeGrants:
    """Grants in memory; burns read from the fake invoices' lines of kind ``grant``."""

    def __init__(self, invoices: FakeInvoices) -> None:
        self.invoices = invoices
        self.stored: list[GrantRecord] = []
        self.locked: list[str] = []

    def lock_account(self, account: str) -> None:
        self.locked.append(account)

    def insert(self, grant: Grant, reason: str, created_by: str, created_at: datetime) -> int:
        grant_id = len(self.stored) + 1
        self.stored.append(GrantRecord(dataclasses.replace(grant, id=grant_id), reason, created_by, created_at))
        return grant_id

    def find(self, grant_id: int) -> GrantRecord:
        for g in self.stored:
            if g.grant.id == grant_id:
                return g
        raise GrantNotFound(f"there is no grant {grant_id}")

    def void(self, grant_id: int, voided_by: str, reason: str, at: datetime) -> None:
        found = self.find(grant_id)
        if found.grant.voided:
            raise GrantError(f"grant {grant_id} is already voided")
        voided = dataclasses.replace(found.grant, voided=True)
        self.stored[grant_id - 1] = dataclasses.replace(
            found, grant=voided, voided_at=at, voided_by=voided_by, void_reason=reason
        )

    def listing(self, account: str | None) -> list[GrantRecord]:
        return [g for g in self.stored if account in (None, g.grant.account)]

    def burns(self, account: str) -> list[RecordedBurn]:
        return [
            RecordedBurn(
                int(p.adjusts["grant"]),
                i,
                s.record.period_start,
                s.record.status == "finalized",
                Decimal(p.adjusts["burned"]),
            )
            for i, s in sorted(self.invoices.stored.items())
            if s.record.account_code == account and s.record.status != "void"
            for p in s.lines
            if p.line.kind == "grant" and p.adjusts is not None
        ]


class FakeAmendments:
    """Amendments in memory; their rows are added to the fake usage (usage = metered + amendments)."""

    def __init__(self, usage: FakeUsage) -> None:
        self.usage = usage
        self.stored: list[AmendmentRecord] = []
        self.locked = 0

    def lock(self) -> None:
        self.locked += 1

    def insert(self, record: AmendmentRecord, rows: Sequence[UsageRow]) -> int:
        stored = dataclasses.replace(record, id=len(self.stored) + 1, rows=len(rows))
        self.stored.append(stored)
        self.usage.stored.extend(rows)
        return stored.id

    def find(self, amendment_id: int) -> AmendmentRecord:
        for a in self.stored:
            if a.id == amendment_id:
                return a
        raise AmendmentNotFound(f"there is no amendment {amendment_id}")

    def listing(self) -> list[AmendmentRecord]:
        return list(self.stored)


class FakeWebhookEvents:
    """The events emitted, in order (no endpoints: nothing is queued)."""

    def __init__(self) -> None:
        self.emitted: list[WebhookEvent] = []

    def emit(self, event: WebhookEvent) -> int:
        self.emitted.append(event)
        return 0


class FakeProducts:
    """Products, their versions and subscriptions in memory (``ProductRepository``)."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.stored: dict[tuple[str, int], ProductVersionRecord] = {}
        self.subs: dict[int, ProductSubscription] = {}
        self.locked = 0

    def lock(self) -> None:
        self.locked += 1

    def head(self, code: str) -> ProductVersionRecord | None:
        versions = self.versions(code)
        return versions[-1] if versions else None

    def publish(self, record: ProductVersionRecord, position: int) -> None:
        assert (record.code, record.version) not in self.stored
        self.positions.setdefault(record.code, position)
        self.stored[(record.code, record.version)] = record

    def move(self, code: str, position: int) -> None:
        self.positions[code] = position

    def lock_account(self, account: str) -> None:
        self.locked += 1

    def set_deprecation(self, code: str, version: int, until: date | None) -> bool:
        record = self.stored.get((code, version))
        if record is None or record.deprecated_until == until:
            return False
        self.stored[(code, version)] = dataclasses.replace(record, deprecated_until=until)
        return True

    def version(self, code: str, version: int) -> ProductVersionRecord | None:
        return self.stored.get((code, version))

    def versions(self, code: str) -> list[ProductVersionRecord]:
        return sorted((r for (c, _), r in self.stored.items() if c == code), key=lambda r: r.version)

    def heads(self) -> list[ProductVersionRecord]:
        codes = sorted(self.positions, key=lambda c: (self.positions[c], c))
        return [h for h in (self.head(c) for c in codes) if h is not None]

    def add_subscription(self, sub: ProductSubscription) -> int:
        live = [s for s in self.subs.values() if (s.account, s.product) == (sub.account, sub.product)]
        assert not any(s.status in ("requested", "active") for s in live), "the unique index refuses it"
        new_id = len(self.subs) + 1
        self.subs[new_id] = dataclasses.replace(sub, id=new_id)
        return new_id

    def save_subscription(self, sub: ProductSubscription) -> None:
        assert sub.id in self.subs
        self.subs[sub.id] = sub

    def subscription(self, sub_id: int, for_update: bool = False) -> ProductSubscription | None:
        return self.subs.get(sub_id)

    def subscriptions(
        self, account: str | None = None, product: str | None = None, status: str | None = None
    ) -> list[ProductSubscription]:
        return [
            s
            for _, s in sorted(self.subs.items())
            if account in (None, s.account) and product in (None, s.product) and status in (None, s.status)
        ]


class FakeUnitOfWork:
    """``uows = FakeUnitOfWork(); run_billing(uows, …)``: the fake is its own factory, and every
    unit of work it makes shares its repositories."""

    def __init__(self) -> None:
        self.usage = FakeUsage()
        self.catalog = FakeCatalog()
        self.invoices = FakeInvoices()
        self.statements = FakeStatements()
        self.credit_notes = FakeCreditNotes(self.invoices)
        self.grants = FakeGrants(self.invoices)
        self.amendments = FakeAmendments(self.usage)

        self.webhooks = FakeWebhookEvents()
        self.products = FakeProducts()
        self.opened = 0

    def __call__(self) -> FakeUnitOfWork:
        return self

    def __enter__(self) -> FakeUnitOfWork:
        self.opened += 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return None
