"""Shadow runs over in-memory fakes (tests/unit/billing/fakes.py): a period rated under a
candidate plan beside the real totals, writing nothing. Expected amounts are worked by hand.

November 2026 has 30 days. Plans (all but ``dollar`` in EUR):

* ``basic`` v1: base fee 10.00, produce_bytes 0.50 per GB, produce_requests 1.00 per thousand.
* ``basic`` v2: base fee 12.00, produce_bytes 0.45 per GB (requests no longer priced).
* ``tiered`` v1: produce_bytes graduated per GB — up to 5 at 0.00, up to 20 at 0.30, beyond 0.10 —
  and a minimum commitment of 10.00.
* ``dollar`` v1 (USD): produce_bytes 2.00 per GB.

Accounts: acme (EUR, 20 % tax) on basic v1 all month, 24 GB and 2,000 requests on the 3rd;
globex (EUR, no tax) on basic v1 from the 16th (15 of 30 days), 10 GB on the 20th; initech (USD)
on dollar, 1 GB; hooli (EUR) with no subscription, 3 GB.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.domain.plans import PlanVersion, Price, Tier
from billing.domain.shadow import ShadowBill, subscribed_spans
from billing.errors import AccountNotFound, NotFound, PlanNotFound, RunError
from billing.services.billing_run import run_billing
from billing.services.shadow import shadow_run
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row

D = Decimal
BASIC = PlanVersion(
    code="basic",
    name="Basic",
    version=1,
    currency="EUR",
    base_fee=D("10.00"),
    prices=(
        Price("produce_bytes", "per_unit", "GB", unit_price=D("0.50")),
        Price("produce_requests", "per_unit", "thousand", unit_price=D("1.00")),
    ),
)
BASIC_2 = PlanVersion(
    code="basic",
    name="Basic",
    version=2,
    currency="EUR",
    base_fee=D("12.00"),
    prices=(Price("produce_bytes", "per_unit", "GB", unit_price=D("0.45")),),
)
TIERED = PlanVersion(
    code="tiered",
    name="Tiered",
    version=1,
    currency="EUR",
    minimum_commitment=D("10.00"),
    prices=(
        Price(
            "produce_bytes",
            "graduated",
            "GB",
            tiers=(Tier(D(5), D("0.00")), Tier(D(20), D("0.30")), Tier(None, D("0.10"))),
        ),
    ),
)
DOLLAR = PlanVersion(
    code="dollar",
    name="Dollar",
    version=1,
    currency="USD",
    prices=(Price("produce_bytes", "per_unit", "GB", unit_price=D("2.00")),),
)
JAN1, NOV3, NOV16, NOV20 = date(2026, 1, 1), date(2026, 11, 3), date(2026, 11, 16), date(2026, 11, 20)


def clock() -> datetime:
    return datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def uows() -> FakeUnitOfWork:
    uows = FakeUnitOfWork()
    cat = uows.catalog
    cat.add_account("acme", tax_rate="0.20")
    cat.add_account("globex")
    cat.add_account("initech", currency="USD")
    cat.add_account("hooli")
    cat.subscribe("acme", BASIC, JAN1)
    cat.subscribe("globex", BASIC, NOV16)
    cat.subscribe("initech", DOLLAR, JAN1)
    cat.plans[("basic", 2)] = BASIC_2
    cat.plans[("tiered", 1)] = TIERED
    uows.usage.stored += [
        row("acme", "proxy", NOV3, bytes_=24 * GB, requests=2_000),
        row("globex", "proxy", NOV20, bytes_=10 * GB),
        row("initech", "proxy", NOV3, bytes_=1 * GB),
        row("hooli", "proxy", NOV3, bytes_=3 * GB),
    ]
    return uows


def table(bills: list[ShadowBill]) -> dict[str, tuple[str | None, ...]]:
    return {
        b.account: tuple(b.as_dict()[k] for k in ("real_from", "real_total", "shadow_total", "difference", "note"))
        for b in bills
    }


def test_a_per_unit_version_against_the_rated_period_without_invoices(uows: FakeUnitOfWork) -> None:
    bills = shadow_run(uows, "2026-11", "basic@2")
    assert {b.plan for b in bills} == {"basic v2"}
    assert table(bills) == {
        # real (basic v1): 10.00 + 24 GB × 0.50 = 12.00 + 2 thousand × 1.00 = 2.00 → 24.00, tax 4.80 → 28.80
        # shadow (basic v2): 12.00 + 24 × 0.45 = 10.80 (requests unpriced: 0) → 22.80, tax 4.56 → 27.36
        "acme": ("rated", "28.80", "27.36", "-1.44", ""),
        # subscribed from the 16th (15/30 days): real 10.00 × 15/30 = 5.00 + 10 × 0.50 = 5.00 → 10.00;
        # the candidate on the same days: 12.00 × 15/30 = 6.00 + 10 × 0.45 = 4.50 → 10.50
        "globex": ("rated", "10.00", "10.50", "0.50", ""),
        # no subscription: its usage listed at zero, and no candidate either
        "hooli": ("rated", "0.00", None, None, "no subscription in the period"),
        # 1 GB × 2.00 USD; the candidate is in EUR
        "initech": ("rated", "2.00", None, None, "the candidate is priced in EUR, the account is billed in USD"),
    }
    acme = bills[0].as_dict()
    got = (acme["currency"], acme["real_plan"], acme["real_tax"], acme["shadow_tax"])
    assert got == ("EUR", "basic v1", "4.80", "4.56")


def test_a_tiered_candidate_against_finalized_invoices_changes_nothing(uows: FakeUnitOfWork) -> None:
    run_billing(uows, "2026-11", finalize_drafts=True, clock=clock, render=False)
    before = copy.deepcopy(uows.invoices.stored), list(uows.invoices.locks)
    bills = shadow_run(uows, "2026-11", "tiered", accounts=["globex", "acme"])
    assert (copy.deepcopy(uows.invoices.stored), uows.invoices.locks) == before
    assert table(bills) == {
        # 24 GB graduated: 5 × 0.00 + 15 × 0.30 = 4.50 + 4 × 0.10 = 0.40 → 4.90; requests unpriced;
        # minimum 10.00 → top-up 5.10 → 10.00, tax 2.00 → 12.00 against the finalized 28.80
        "acme": ("finalized", "28.80", "12.00", "-16.80", ""),
        # prorated like its subscription (15/30): minimum 5.00; 10 GB: 5 × 0 + 5 × 0.30 = 1.50 →
        # top-up 3.50 → 5.00, no tax, against the finalized 10.00
        "globex": ("finalized", "10.00", "5.00", "-5.00", ""),
    }
    assert [b.real.ref for b in bills] == ["INV-2026-000001", "INV-2026-000002"]


def test_a_draft_is_the_real_side_and_its_adjustments_are_carried(uows: FakeUnitOfWork) -> None:
    run_billing(uows, "2026-10", finalize_drafts=True, clock=clock, render=False)  # October: nothing used
    uows.usage.stored.append(row("acme", "proxy", date(2026, 10, 5), bytes_=2 * GB))  # late October usage
    [acme_nov, *_] = run_billing(uows, "2026-11", clock=clock)
    # the November draft: 24.00 + adjustment for October 2 GB × 0.50 = 1.00 → 25.00, tax 5.00 → 30.00
    assert acme_nov.total == D("30.00")
    [bill] = shadow_run(uows, "2026-11", "basic@2", accounts=["acme"])
    # shadow: 22.80 + the same 1.00 adjustment → 23.80, tax 4.76 → 28.56
    assert table([bill])["acme"] == ("draft", "30.00", "28.56", "-1.44", "")
    assert bill.real.ref == f"draft-{acme_nov.invoice_id}"


def test_a_plan_change_is_one_candidate_span() -> None:
    a, b = BASIC, BASIC_2
    nov1, dec1 = date(2026, 11, 1), date(2026, 12, 1)
    # basic v1 until the 16th, then v2: one span, so the candidate's fees are not split in two
    assert subscribed_spans([(JAN1, NOV16, a), (NOV16, None, b)], nov1, dec1) == [(JAN1, None)]
    # a gap between two subscriptions stays a gap: those days are billed by no plan
    assert subscribed_spans([(JAN1, NOV3, a), (NOV16, NOV20, b)], nov1, dec1) == [(JAN1, NOV3), (NOV16, NOV20)]
    assert subscribed_spans([], nov1, dec1) == []


def test_a_plan_change_inside_the_period_rates_the_whole_month_under_the_candidate(uows: FakeUnitOfWork) -> None:
    cat = uows.catalog
    cat.subs = [s for s in cat.subs if s.account != "acme"]
    cat.subscribe("acme", BASIC, JAN1, NOV16)
    cat.subscribe("acme", BASIC_2, NOV16)
    [bill] = shadow_run(uows, "2026-11", "basic@2", accounts=["acme"])
    # one span, all 30 days: 12.00 + 24 × 0.45 = 10.80 → 22.80, tax 4.56 → 27.36 (as if on v2 all month)
    assert bill.as_dict()["shadow_total"] == "27.36"


def test_a_candidate_from_a_plans_file_that_is_not_loaded(uows: FakeUnitOfWork, tmp_path: Path) -> None:
    path = tmp_path / "plans-candidate.yaml"
    path.write_text(
        "plans:\n"
        "  - code: basic\n"
        "    name: Basic\n"
        "    currency: EUR\n"
        '    base_fee: "8.00"\n'
        "    prices:\n"
        '      - {meter: produce_bytes, unit: GB, model: per_unit, unit_price: "0.60"}\n',
        encoding="utf-8",
    )
    [bill] = shadow_run(uows, "2026-11", "basic", accounts=["acme"], plan_file=path)
    # 8.00 + 24 × 0.60 = 14.40 → 22.40, tax 4.48 → 26.88
    assert bill.plan == f"basic ({path})"
    assert table([bill])["acme"] == ("rated", "28.80", "26.88", "-1.92", "")
    assert uows.catalog.plans.keys() == {("basic", 1), ("basic", 2), ("tiered", 1), ("dollar", 1)}
    with pytest.raises(RunError, match="has no version yet"):
        shadow_run(uows, "2026-11", "basic@2", plan_file=path)
    with pytest.raises(PlanNotFound, match="has no plan 'tiered'"):
        shadow_run(uows, "2026-11", "tiered", plan_file=path)


@pytest.mark.parametrize(
    ("plan", "accounts", "error", "says"),
    [
        ("premium", None, PlanNotFound, "there is no plan 'premium' in the catalog"),
        ("basic@3", None, PlanNotFound, "plan 'basic' has no version '3' (it has v1 to v2)"),
        ("basic@x", None, PlanNotFound, "plan 'basic' has no version 'x'"),
        ("basic", ["acme", "nobody"], AccountNotFound, "there is no account 'nobody'"),
    ],
)
def test_unknown_plans_versions_and_accounts_are_not_found(
    uows: FakeUnitOfWork, plan: str, accounts: list[str] | None, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says.replace("(", r"\(").replace(")", r"\)")) as caught:
        shadow_run(uows, "2026-11", plan, accounts=accounts)
    assert isinstance(caught.value, NotFound)


def test_a_period_without_usage_is_one_sentence(uows: FakeUnitOfWork) -> None:
    with pytest.raises(RunError, match=r"^there is no usage in 2026-10: a shadow run has nothing to compare$"):
        shadow_run(uows, "2026-10", "basic")
