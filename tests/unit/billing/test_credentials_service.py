"""Kafka credentials over an in-memory store: a password is shown once and only its SCRAM keys are
kept; rotation keeps the old password for the overlap; a revoked credential is gone for the
gateways and listed only when asked."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.errors import CredentialError, CredentialNotFound
from billing.services.credentials import (
    credential_doc,
    credential_views,
    issue_credential,
    published_states,
    rotate_password,
    withdraw_credential,
)
from billing.services.ports import StoredKey
from metering.credentials import MECHANISMS, scram_key

from .fakes_edge import T0, FakeCredentials


def _verifies(key: StoredKey, password: str) -> bool:
    return scram_key(key.mechanism, password, key.salt, key.iterations).stored_key == key.stored_key


def test_a_new_credential_keeps_scram_keys_of_its_password_and_never_the_password() -> None:
    store = FakeCredentials({"acme"})
    issued = issue_credential(store, "acme", "etl")
    assert (issued.account, issued.username, issued.principal) == ("acme", "acme/etl", "User:acme/etl")
    keys = store.keys_of(issued.id)
    assert sorted(k.mechanism for k in keys) == sorted(MECHANISMS)
    assert all(_verifies(k, issued.password) and not _verifies(k, issued.password + "x") for k in keys)
    kept = repr(store.rows) + repr(store.key_rows)
    assert issued.password not in kept and issued.password.encode() not in b"".join(k.salt for k in keys)


def test_a_credential_needs_a_known_account_and_a_valid_unused_name() -> None:
    store = FakeCredentials({"acme"})
    with pytest.raises(CredentialNotFound, match="there is no account 'nobody'"):
        issue_credential(store, "nobody", "etl")
    with pytest.raises(CredentialError, match="--name 'ETL!' must be 1–63 lower-case letters"):
        issue_credential(store, "acme", "ETL!")
    issue_credential(store, "acme", "etl")
    with pytest.raises(CredentialError, match="account 'acme' already has a credential named 'etl'"):
        issue_credential(store, "acme", "etl")
    assert len(store.rows) == 1
    assert issue_credential(store, "acme").username.startswith("acme/cred-")  # a name is made up


def test_a_rotation_keeps_the_old_password_for_the_overlap_and_the_salt() -> None:
    store = FakeCredentials({"acme"})
    first = issue_credential(store, "acme", "etl")
    second = rotate_password(store, first.id, timedelta(hours=1), T0)
    assert second.password != first.password and second.username == first.username
    old = [k for k in store.keys_of(first.id) if k.generation == 1]
    new = [k for k in store.keys_of(first.id) if k.generation == 2]
    assert all(k.valid_until == T0 + timedelta(hours=1) and _verifies(k, first.password) for k in old)
    assert all(k.valid_until is None and _verifies(k, second.password) for k in new)
    assert {(k.mechanism, k.salt) for k in old} == {(k.mechanism, k.salt) for k in new}
    # the gateways get both passwords' keys during the overlap, only the new ones after it
    assert len(published_states(store, T0)[0].keys) == 4
    assert [k.valid_until for k in published_states(store, T0 + timedelta(hours=1))[0].keys] == [None, None]
    view = credential_views(store, T0)[0]
    assert view.old_password_valid_until == T0 + timedelta(hours=1)
    assert view.rotated_at == new[0].created_at
    assert credential_views(store, T0 + timedelta(hours=2))[0].old_password_valid_until is None


def test_a_revoked_credential_is_not_listed_unless_asked_and_publishes_no_key() -> None:
    store = FakeCredentials({"acme", "globex"})
    kept = issue_credential(store, "acme", "etl")
    gone = issue_credential(store, "acme", "old")
    other = issue_credential(store, "globex", "etl")
    withdraw_credential(store, gone.id, T0)
    assert [v.id for v in credential_views(store, T0)] == [kept.id, other.id]
    assert [v.id for v in credential_views(store, T0, "acme")] == [kept.id]
    listed = credential_views(store, T0, "acme", include_revoked=True)
    assert [(v.id, v.state, v.revoked_at) for v in listed] == [(kept.id, "active", None), (gone.id, "revoked", T0)]
    published = {c.id: c for c in published_states(store, T0)}
    assert (published[gone.id].state, published[gone.id].keys) == ("revoked", ())
    assert published[kept.id].state == "active" and len(published[kept.id].keys) == 2
    with pytest.raises(CredentialNotFound, match="there is no active credential"):
        withdraw_credential(store, gone.id, T0)
    with pytest.raises(CredentialNotFound, match="there is no active credential"):
        rotate_password(store, gone.id, timedelta(hours=1), T0)


def test_a_credential_as_operators_see_it_has_no_secret() -> None:
    store = FakeCredentials({"acme"})
    issued = issue_credential(store, "acme", "etl")
    doc = credential_doc(credential_views(store, T0)[0])
    assert doc["mechanisms"] == ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
    assert (doc["principal"], doc["state"], doc["rotated_at"]) == ("User:acme/etl", "active", None)
    assert issued.password not in repr(doc)
    assert set(doc) == {
        "id", "account", "name", "username", "principal", "mechanisms", "state", "created_at", "rotated_at",
        "revoked_at", "old_password_valid_until",
    }  # fmt: skip
