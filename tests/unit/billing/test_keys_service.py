"""API keys over an in-memory store: who may get a key, what a presented key proves, revocation."""

from __future__ import annotations

import pytest

from billing.errors import ApiKeyError, ApiKeyNotFound
from billing.services.keys import Caller, caller_of, issue_key, keys_of, withdraw_key

from .fakes_edge import T0, FakeApiKeys


def test_a_new_key_authenticates_as_its_role_and_account_and_only_its_hash_is_kept() -> None:
    keys = FakeApiKeys({"acme"})
    presented = issue_key(keys, "partner", "acme")
    assert presented.startswith("stk_")
    caller = caller_of(keys, presented)
    assert caller is not None and (caller.role, caller.account) == ("partner", "acme")
    secret = presented.split("_", 2)[2]
    stored = keys.rows[caller.key_id]
    assert secret not in repr(stored) and stored.secret_sha256 != secret


def test_a_finance_key_is_bound_to_no_account_and_sees_every_account() -> None:
    keys = FakeApiKeys({"acme"})
    caller = caller_of(keys, issue_key(keys, "finance", "acme"))
    assert caller is not None and caller.account is None
    assert caller.sees("acme") and caller.sees("globex")
    partner = Caller("k", "partner", "acme")
    assert partner.sees("acme") and not partner.sees("globex")


@pytest.mark.parametrize(
    ("role", "account", "error", "message"),
    [
        ("admin", None, ApiKeyError, "role must be partner, finance or ops"),
        ("partner", None, ApiKeyError, "a partner key needs --account"),
        ("partner", "nobody", ApiKeyNotFound, "there is no account 'nobody'; load accounts first"),
    ],
)
def test_a_key_is_refused_for_a_wrong_role_or_account(
    role: str, account: str | None, error: type[Exception], message: str
) -> None:
    keys = FakeApiKeys({"acme"})
    with pytest.raises(error, match=message):
        issue_key(keys, role, account)
    assert keys.rows == {}


def test_a_wrong_malformed_or_unknown_key_authenticates_nobody() -> None:
    keys = FakeApiKeys({"acme"})
    presented = issue_key(keys, "partner", "acme")
    _, key_id, secret = presented.split("_", 2)
    for wrong in (
        f"stk_{key_id}_{secret}x",
        f"stk_{key_id}_",
        f"stk__{secret}",
        f"xyz_{key_id}_{secret}",
        f"stk_{key_id}",
        "stk_000000000000_" + secret,
        "",
    ):
        assert caller_of(keys, wrong) is None, wrong


def test_a_revoked_key_authenticates_nobody_and_cannot_be_revoked_twice() -> None:
    keys = FakeApiKeys({"acme"})
    presented = issue_key(keys, "partner", "acme")
    key_id = presented.split("_", 2)[1]
    withdraw_key(keys, key_id, T0)
    assert caller_of(keys, presented) is None
    with pytest.raises(ApiKeyNotFound, match=f"there is no active key '{key_id}'"):
        withdraw_key(keys, key_id, T0)
    with pytest.raises(ApiKeyNotFound):
        withdraw_key(keys, "unknown", T0)


def test_keys_are_listed_oldest_first_without_revoked_ones_unless_asked_and_never_with_a_secret() -> None:
    keys = FakeApiKeys({"acme", "globex"})
    first = issue_key(keys, "partner", "acme").split("_", 2)[1]
    second = issue_key(keys, "finance", None).split("_", 2)[1]
    third = issue_key(keys, "partner", "globex").split("_", 2)[1]
    withdraw_key(keys, second, T0)
    assert [v.key_id for v in keys_of(keys)] == [first, third]
    assert [(v.key_id, v.revoked_at) for v in keys_of(keys, include_revoked=True)] == [
        (first, None),
        (second, T0),
        (third, None),
    ]
    assert [v.key_id for v in keys_of(keys, "globex")] == [third]
    assert not hasattr(keys_of(keys)[0], "secret_sha256")
