"""Accounts and client rules: who gets invoiced, and which traffic is theirs.

Attribution: rules are tried in a stated order — accounts in the order of the accounts file,
each account's rules in their order — and the first rule that matches wins. A rule matches
when every field it names matches (``principal`` and ``client_id`` and ``virtual_cluster`` are
shell-style globs, ``*`` matching anything, case-sensitive) and the usage hour lies in its
validity ``[valid_from, valid_until)`` (dates, UTC, either end open). No match → ``unassigned``.
Attribution happens at billing time from the raw identity each usage row keeps, so a rule
corrected before an invoice is finalized re-attributes that period on the next run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from itertools import pairwise
from typing import Any

from billing.domain.access import Access, parse_access
from billing.errors import AccountError

__all__ = ["CODE_PATTERN", "UNASSIGNED", "Account", "Attributor", "ClientRule", "Subscription", "parse_accounts"]

UNASSIGNED = "unassigned"
CODE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # an account's code (the API declares it in OpenAPI)
_CODE = re.compile(CODE_PATTERN)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class ClientRule:
    principal: str | None = None
    client_id: str | None = None
    virtual_cluster: str | None = None
    valid_from: date | None = None
    valid_until: date | None = None

    def matches(self, principal: str, client_id: str, virtual_cluster: str, on: date) -> bool:
        if self.valid_from is not None and on < self.valid_from:
            return False
        if self.valid_until is not None and on >= self.valid_until:
            return False
        return (
            (self.principal is None or fnmatchcase(principal, self.principal))
            and (self.client_id is None or fnmatchcase(client_id, self.client_id))
            and (self.virtual_cluster is None or fnmatchcase(virtual_cluster, self.virtual_cluster))
        )


@dataclass(frozen=True)
class Subscription:
    plan: str
    starts_on: date
    ends_on: date | None = None


@dataclass(frozen=True)
class Account:
    code: str
    name: str
    email: str
    currency: str
    tax_rate: Decimal
    address: tuple[str, ...]
    rules: tuple[ClientRule, ...]
    subscription: Subscription | None
    access: Access | None = None  # grants added to its plan's (billing.domain.access)


class Attributor:
    """First-match attribution over rules in order, fast for many accounts.

    Rules are indexed by their principal: exact principals in a dict, globs by the literal text
    before their first wildcard, rules without a principal always tried. For an identity only
    the rules its principal can match are tried, in their original order, so the first match
    is the same as trying every rule.
    """

    def __init__(self, rules: Iterable[tuple[str, ClientRule]], credentials: Mapping[str, str] | None = None) -> None:
        """``rules``: (account code, rule) pairs in the order they are tried. ``credentials``:
        principal → account of the credentials streamtoll issued (``User:acme/orders-svc`` →
        ``acme``): such a principal is its account's, always, before any rule (the gateway
        authenticated it; no rule is needed, and none can give its traffic to another account)."""
        self._credentials = dict(credentials or {})
        self._rules = list(rules)
        self._exact: dict[str, list[int]] = {}
        self._prefix: dict[str, list[int]] = {}
        self._anyone: list[int] = []
        for i, (_, rule) in enumerate(self._rules):
            pattern = rule.principal
            if pattern is None:
                self._anyone.append(i)
                continue
            cut = min((pattern.find(c) for c in "*?[" if c in pattern), default=-1)
            if cut < 0:
                self._exact.setdefault(pattern, []).append(i)
            else:
                self._prefix.setdefault(pattern[:cut], []).append(i)
        self._candidates: dict[tuple[str, str, str], list[tuple[str, ClientRule]]] = {}
        self._memo: dict[tuple[str, str, str, date], str] = {}

    @classmethod
    def for_accounts(cls, accounts: Sequence[Account]) -> Attributor:
        return cls((a.code, r) for a in accounts for r in a.rules)

    def _rules_for(self, principal: str, client_id: str, virtual_cluster: str) -> list[tuple[str, ClientRule]]:
        found = list(self._anyone)
        found += self._exact.get(principal, ())
        for n in range(len(principal) + 1):
            found += self._prefix.get(principal[:n], ())
        out = []
        for i in sorted(found):
            code, rule = self._rules[i]
            # dates aside, does the rule match this identity?
            if rule.matches(principal, client_id, virtual_cluster, rule.valid_from or date.min):
                out.append((code, rule))
        return out

    def account_for(self, principal: str, client_id: str, virtual_cluster: str, on: date) -> str:
        if (owner := self._credentials.get(principal)) is not None:
            return owner
        key = (principal, client_id, virtual_cluster, on)
        got = self._memo.get(key)
        if got is None:
            ident = key[:3]
            rules = self._candidates.get(ident)
            if rules is None:
                rules = self._candidates[ident] = self._rules_for(principal, client_id, virtual_cluster)
            got = next(
                (code for code, rule in rules if rule.matches(principal, client_id, virtual_cluster, on)), UNASSIGNED
            )
            self._memo[key] = got
        return got

    def spans(
        self, principal: str, client_id: str, virtual_cluster: str, start: date, end: date
    ) -> list[tuple[date, date, str]]:
        """``[since, until)`` day spans of ``[start, end)`` in which the identity's account is one
        and the same, as (since, until, account): the account can change only where a rule that
        matches the identity starts or stops being valid."""
        if (owner := self._credentials.get(principal)) is not None:
            return [(start, end, owner)] if start < end else []
        ident = (principal, client_id, virtual_cluster)
        rules = self._candidates.get(ident)
        if rules is None:
            rules = self._candidates[ident] = self._rules_for(principal, client_id, virtual_cluster)
        cuts = {start, end}
        for _, rule in rules:
            cuts.update(d for d in (rule.valid_from, rule.valid_until) if d is not None and start < d < end)
        bounds = sorted(cuts)
        out: list[tuple[date, date, str]] = []
        for since, until in pairwise(bounds):
            code = self.account_for(principal, client_id, virtual_cluster, since)
            if out and out[-1][2] == code:
                out[-1] = (out[-1][0], until, code)
            else:
                out.append((since, until, code))
        return out

    def rules_of(self, account: str) -> list[ClientRule]:
        """The rules that can give traffic to ``account`` (its own), in their order."""
        return [rule for code, rule in self._rules if code == account]

    def credential_principals_of(self, account: str) -> list[str]:
        """The principals of the credentials issued to ``account`` (its own before any rule)."""
        return sorted(p for p, code in self._credentials.items() if code == account)


def _date(v: Any, where: str, problems: list[str]) -> date | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        problems.append(f"{where}: give a date (YYYY-MM-DD), not a time")
        return None
    if isinstance(v, date):
        return v
    if isinstance(v, str):
        try:
            return date.fromisoformat(v)
        except ValueError:
            pass
    problems.append(f"{where}: {v!r} is not a date (YYYY-MM-DD)")
    return None


def _text(entry: Mapping[str, Any], field: str, where: str, problems: list[str], required: bool = True) -> str | None:
    v = entry.get(field)
    if v is None:
        if required:
            problems.append(f"{where}.{field}: missing")
        return None
    if not isinstance(v, str) or not v.strip():
        problems.append(f"{where}.{field}: must be a non-empty string")
        return None
    return v


def parse_accounts(doc: Any, source: str = "accounts") -> list[Account]:
    """Validate an accounts document (``{"accounts": [...]}``); every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(doc, Mapping) or not isinstance(doc.get("accounts"), list):
        raise AccountError([f"{source}: the top level must be a mapping with an 'accounts' list"])
    out: list[Account] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["accounts"]):
        where = f"{source}: accounts[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a mapping")
            continue
        before = len(problems)
        code = _text(entry, "code", where, problems)
        if code is not None:
            where = f"{where} ({code})"
            if code == UNASSIGNED or not _CODE.fullmatch(code):  # fullmatch: "$" alone would let "acme\n" in
                problems.append(f"{where}.code: use lowercase letters, digits, - and _ (and not 'unassigned')")
            elif code in seen:
                problems.append(f"{where}.code: {code!r} appears twice")
            seen.add(code)
        name = _text(entry, "name", where, problems)
        email = _text(entry, "email", where, problems)
        if email is not None and not _EMAIL.match(email):
            problems.append(f"{where}.email: {email!r} is not an email address")
        currency = _text(entry, "currency", where, problems)
        if currency is not None and not _CURRENCY.match(currency):
            problems.append(f"{where}.currency: {currency!r} is not an ISO 4217 code like EUR")
        tax_raw = entry.get("tax_rate", "0")
        tax = Decimal(0)
        if isinstance(tax_raw, float):
            problems.append(f'{where}.tax_rate: write it as a quoted string ("0.19"), not a float')
        else:
            try:
                tax = Decimal(str(tax_raw))
                if not Decimal(0) <= tax < Decimal(1):
                    problems.append(f"{where}.tax_rate: must be ≥ 0 and < 1 (0.19 for 19 %)")
            except InvalidOperation:
                problems.append(f"{where}.tax_rate: {tax_raw!r} is not a number")
        address = entry.get("address", [])
        if not isinstance(address, list) or not all(isinstance(x, str) for x in address):
            problems.append(f"{where}.address: must be a list of lines")
            address = []
        rules: list[ClientRule] = []
        raw_rules = entry.get("clients", [])
        if not isinstance(raw_rules, list):
            problems.append(f"{where}.clients: must be a list of rules")
            raw_rules = []
        for j, r in enumerate(raw_rules):
            rw = f"{where}.clients[{j}]"
            if not isinstance(r, Mapping):
                problems.append(f"{rw}: must be a mapping")
                continue
            unknown = set(r) - {"principal", "client_id", "virtual_cluster", "valid_from", "valid_until"}
            if unknown:
                problems.append(f"{rw}: unknown field(s) {sorted(unknown)}")
            fields = {
                f: _text(r, f, rw, problems, required=False) for f in ("principal", "client_id", "virtual_cluster")
            }
            if not any(v is not None for v in fields.values()):
                problems.append(f"{rw}: name at least one of principal, client_id, virtual_cluster")
            vf = _date(r.get("valid_from"), f"{rw}.valid_from", problems)
            vu = _date(r.get("valid_until"), f"{rw}.valid_until", problems)
            if vf and vu and vu <= vf:
                problems.append(f"{rw}: valid_until must be after valid_from")
            rules.append(ClientRule(fields["principal"], fields["client_id"], fields["virtual_cluster"], vf, vu))
        subscription = None
        sub = entry.get("subscription")
        if sub is not None:
            sw = f"{where}.subscription"
            if not isinstance(sub, Mapping):
                problems.append(f"{sw}: must be a mapping with plan and starts_on")
            else:
                plan = _text(sub, "plan", sw, problems)
                starts = _date(sub.get("starts_on"), f"{sw}.starts_on", problems)
                if sub.get("starts_on") is None:
                    problems.append(f"{sw}.starts_on: missing")
                ends = _date(sub.get("ends_on"), f"{sw}.ends_on", problems)
                if starts and ends and ends <= starts:
                    problems.append(f"{sw}.ends_on: must be after starts_on")
                if plan and starts:
                    subscription = Subscription(plan, starts, ends)
        access = parse_access(entry["access"], f"{where}.access", problems) if "access" in entry else None
        if len(problems) == before:
            assert code and name and email and currency
            out.append(Account(code, name, email, currency, tax, tuple(address), tuple(rules), subscription, access))
    if problems:
        raise AccountError(problems)
    return out
