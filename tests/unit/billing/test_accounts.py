from __future__ import annotations

from datetime import date
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.accounts import UNASSIGNED, Attributor, ClientRule, parse_accounts
from billing.errors import AccountError


def load(samples: Path) -> Any:
    return yaml.safe_load((samples / "accounts.yaml").read_text())


def test_sample_accounts_parse(samples: Path) -> None:
    accounts = parse_accounts(load(samples))
    assert [a.code for a in accounts] == ["acme", "globex", "initech"]
    acme = accounts[0]
    assert (acme.currency, acme.tax_rate, acme.address[-1]) == ("EUR", Decimal("0.19"), "Germany")
    assert acme.subscription is not None and acme.subscription.starts_on == date(2026, 1, 1)
    assert accounts[1].rules[0].valid_from == date(2026, 11, 10)


@pytest.mark.parametrize(
    ("principal", "client_id", "vc", "on", "expected"),
    [
        ("User:acme-orders", "orders-svc-7", "prod", date(2026, 11, 3), "acme"),
        ("User:someone", "acme-batch", "", date(2026, 11, 3), "acme"),  # second rule: client id glob
        ("User:globex-analytics", "globex-etl-1", "prod", date(2026, 11, 9), UNASSIGNED),  # before valid_from
        ("User:globex-analytics", "globex-etl-1", "prod", date(2026, 11, 10), "globex"),
        ("User:initech-iot", "", "", date(2026, 11, 3), "initech"),  # "*" matches an empty cluster
        ("User:nobody", "x", "", date(2026, 11, 3), UNASSIGNED),
        ("user:acme-orders", "", "", date(2026, 11, 3), UNASSIGNED),  # globs are case-sensitive
    ],
)
def test_first_matching_rule_wins(
    samples: Path, principal: str, client_id: str, vc: str, on: date, expected: str
) -> None:
    assert Attributor.for_accounts(parse_accounts(load(samples))).account_for(principal, client_id, vc, on) == expected


def test_validity_is_half_open() -> None:
    doc = {
        "accounts": [
            {
                "code": "a",
                "name": "A",
                "email": "a@x.io",
                "currency": "EUR",
                "clients": [{"principal": "User:p", "valid_until": "2026-11-15"}],
            },
            {
                "code": "b",
                "name": "B",
                "email": "b@x.io",
                "currency": "EUR",
                "clients": [{"principal": "User:p", "valid_from": "2026-11-15"}],
            },
        ]
    }
    attr = Attributor.for_accounts(parse_accounts(doc))
    assert attr.account_for("User:p", "", "", date(2026, 11, 14)) == "a"
    assert attr.account_for("User:p", "", "", date(2026, 11, 15)) == "b"


def test_every_mistake_is_reported_with_where_it_is() -> None:
    doc = {
        "accounts": [
            {
                "code": "Bad Code",
                "name": "",
                "email": "nope",
                "currency": "euro",
                "tax_rate": 0.19,
                "clients": [
                    {"principal": "User:x", "valid_from": "2026-12-01", "valid_until": "2026-11-01"},
                    {"colour": "red"},
                ],
                "subscription": {"plan": "growth"},
            },
            {"code": "ok", "name": "OK", "email": "ok@x.io", "currency": "EUR"},
            {"code": "ok", "name": "Dup", "email": "d@x.io", "currency": "EUR"},
            "just text",
        ]
    }
    with pytest.raises(AccountError) as exc:
        parse_accounts(doc, "accounts.yaml")
    text = "\n".join(exc.value.problems)
    for fragment in (
        "accounts[0] (Bad Code).code",
        "accounts[0] (Bad Code).name",
        ".email",
        ".currency",
        "tax_rate: write it as a quoted string",
        "valid_until must be after",
        "unknown field(s) ['colour']",
        "subscription.starts_on: missing",
        "accounts[2] (ok).code: 'ok' appears twice",
        "accounts[3]: must be a mapping",
    ):
        assert fragment in text, fragment
    assert all(p.startswith("accounts.yaml: ") for p in exc.value.problems)


def test_unassigned_is_reserved() -> None:
    with pytest.raises(AccountError, match="not 'unassigned'"):
        parse_accounts({"accounts": [{"code": "unassigned", "name": "U", "email": "u@x.io", "currency": "EUR"}]})


_patterns = st.one_of(st.none(), st.text("ab*?", min_size=0, max_size=4).filter(bool))


@given(
    rules=st.lists(
        st.tuples(
            st.sampled_from(["x", "y", "z"]),
            _patterns,
            _patterns,
            st.one_of(st.none(), st.dates(date(2026, 1, 1), date(2026, 1, 5))),
        ),
        max_size=12,
    ),
    identities=st.lists(
        st.tuples(st.text("ab", max_size=4), st.text("ab", max_size=3), st.dates(date(2026, 1, 1), date(2026, 1, 6))),
        max_size=10,
    ),
)
def test_indexed_attribution_equals_trying_every_rule_in_order(
    rules: list[tuple[str, str | None, str | None, date | None]], identities: list[tuple[str, str, date]]
) -> None:
    pairs = [(code, ClientRule(p, c, None, since)) for code, p, c, since in rules if p or c]
    fast = Attributor(pairs)
    for principal, client_id, on in identities:
        naive = next((code for code, r in pairs if r.matches(principal, client_id, "", on)), UNASSIGNED)
        assert fast.account_for(principal, client_id, "", on) == naive


@given(
    rules=st.lists(
        st.tuples(
            st.sampled_from(["acme", "globex", "initech"]),
            st.one_of(st.none(), st.sampled_from(["a*", "ab", "*b", "a?"])),
            st.one_of(st.none(), st.sampled_from(["x*", "xy"])),
            st.one_of(st.none(), st.dates(date(2026, 1, 1), date(2026, 2, 5))),
            st.one_of(st.none(), st.dates(date(2026, 1, 1), date(2026, 2, 5))),
        ),
        max_size=10,
    ),
    identities=st.lists(st.tuples(st.text("ab", max_size=3), st.text("xy", max_size=2)), max_size=6),
)
def test_spans_are_where_the_account_stays_the_same(
    rules: list[tuple[str, str | None, str | None, date | None, date | None]], identities: list[tuple[str, str]]
) -> None:
    """Statements attribute per span of days: each span's account is every one of its days'."""
    pairs = [(code, ClientRule(p, c, None, since, until)) for code, p, c, since, until in rules if p or c]
    start, end = date(2026, 1, 1), date(2026, 2, 1)
    for principal, client_id in identities:
        attributor = Attributor(pairs)
        spans = attributor.spans(principal, client_id, "", start, end)
        assert spans[0][0] == start and spans[-1][1] == end
        assert all(a[1] == b[0] and a[2] != b[2] for a, b in pairwise(spans))
        for since, until, code in spans:
            for n in range((until - since).days):
                on = date.fromordinal(since.toordinal() + n)
                assert Attributor(pairs).account_for(principal, client_id, "", on) == code
    assert {r for code in ("acme", "globex") for r in Attributor(pairs).rules_of(code)} == {
        r for code, r in pairs if code in ("acme", "globex")
    }


def test_a_credentials_principal_is_its_accounts_before_any_rule() -> None:
    """A credential streamtoll issued (User:acme/orders-svc) belongs to its account with no client
    rule, and a rule that would match it for another account does not take it."""
    from datetime import date as date_

    from billing.domain.accounts import Attributor, ClientRule

    rules = [("other", ClientRule(principal="User:*"))]
    attributor = Attributor(rules, {"User:acme/orders-svc": "acme"})
    on = date_(2026, 12, 1)
    assert attributor.account_for("User:acme/orders-svc", "any-client", "default", on) == "acme"
    assert attributor.spans("User:acme/orders-svc", "c", "default", on, date_(2026, 12, 3)) == [
        (on, date_(2026, 12, 3), "acme")
    ]
    assert attributor.account_for("User:acme/other", "c", "default", on) == "other"
    assert Attributor([]).account_for("User:acme/orders-svc", "c", "default", on) == "unassigned"
