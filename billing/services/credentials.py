"""Kafka credentials streamtoll issues, bound to an account, and their publication to the gateways.

* :func:`create_credential` — a user name ``<account>/<name>`` (principal ``User:<account>/<name>``,
  which billing attributes to the account without a client rule) and a random password, returned
  once; PostgreSQL keeps only its SCRAM-SHA-512 and SCRAM-SHA-256 salted keys
  (:func:`metering.credentials.scram_key`).
* :func:`rotate_credential` — a new password (same salt), the old one valid for ``overlap`` more.
* :func:`revoke_credential` — at once; the gateways close the credential's connections.
* :func:`publish_credentials` — every credential's state, from the database, to the credentials
  topic (compacted, keyed by id; the full record each time). It runs after every change and at
  ``streamtoll api`` start, so a crash between a database write and its publication is repaired by
  the next run; publishing the same state again changes nothing for a reader.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from billing.adapters.control import publish_records
from billing.adapters.uow import UnitOfWork
from billing.domain.webhooks import new_event
from billing.errors import CredentialError, CredentialNotFound, PublishError
from billing.services.ports import CredentialRecord, Credentials, StoredKey
from metering.credentials import MECHANISMS, Credential, ScramKey, encode, scram_key

__all__ = [
    "CredentialView",
    "IssuedCredential",
    "create_credential",
    "credential_doc",
    "credential_views",
    "issue_credential",
    "list_credentials",
    "publish_credentials",
    "published_states",
    "revoke_credential",
    "rotate_credential",
    "rotate_password",
    "withdraw_credential",
]

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class IssuedCredential:
    id: str
    account: str
    username: str
    password: str  # shown once, stored nowhere

    @property
    def principal(self) -> str:
        return "User:" + self.username


@dataclass(frozen=True)
class CredentialView:
    """A credential as operators see it: never a password or a key."""

    id: str
    account: str
    name: str
    username: str
    principal: str
    state: str
    created_at: datetime
    revoked_at: datetime | None
    old_password_valid_until: datetime | None  # during a rotation's overlap
    rotated_at: datetime | None = None  # the newest password's, when it is not the first
    mechanisms: tuple[str, ...] = ()  # SASL mechanisms its keys serve (PLAIN too, over TLS)


def _instant(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def credential_doc(v: CredentialView) -> dict[str, Any]:
    """A credential as the API and ``entitlements show`` give it (JSON-ready; never a secret)."""
    return {
        "id": v.id,
        "account": v.account,
        "name": v.name,
        "username": v.username,
        "principal": v.principal,
        "mechanisms": list(v.mechanisms),
        "state": v.state,
        "created_at": _instant(v.created_at),
        "rotated_at": _instant(v.rotated_at),
        "revoked_at": _instant(v.revoked_at),
        "old_password_valid_until": _instant(v.old_password_valid_until),
    }


def _password() -> str:
    return secrets.token_urlsafe(24)


def _keys(credential_id: str, generation: int, password: str, salts: dict[str, tuple[bytes, int]]) -> list[StoredKey]:
    """The password's keys, one per mechanism (with the salt and iterations given per mechanism)."""
    out = []
    for mechanism in MECHANISMS:
        salt, iterations = salts.get(mechanism, (None, 0))
        key = scram_key(mechanism, password, salt) if salt is None else scram_key(mechanism, password, salt, iterations)
        out.append(
            StoredKey(
                credential_id,
                mechanism,
                generation,
                key.salt,
                key.iterations,
                key.stored_key,
                key.server_key,
                None,
                None,
            )
        )
    return out


def issue_credential(store: Credentials, account: str, name: str | None = None) -> IssuedCredential:
    """A new credential of ``account``; its password is in the result and nowhere else."""
    name = name or "cred-" + secrets.token_hex(3)
    if not NAME.match(name):
        raise CredentialError(
            f"--name {name!r} must be 1–63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    username = f"{account}/{name}"
    password = _password()
    if not store.account_exists(account):
        raise CredentialNotFound(f"there is no account {account!r}; load accounts first")
    if store.username_taken(username):
        raise CredentialError(f"account {account!r} already has a credential named {name!r}")
    cid = "cred_" + secrets.token_hex(6)
    store.add(cid, account, name, username)
    store.add_keys(_keys(cid, 1, password, {}))
    return IssuedCredential(cid, account, username, password)


def rotate_password(store: Credentials, credential_id: str, overlap: timedelta, now: datetime) -> IssuedCredential:
    """A new password for an active credential; the passwords before it stay valid for ``overlap``."""
    password = _password()
    found = store.get_active(credential_id)
    if found is None:
        raise CredentialNotFound(f"there is no active credential {credential_id!r}")
    keys = store.keys_of(credential_id)
    generation = max(k.generation for k in keys) + 1
    salts = {k.mechanism: (k.salt, k.iterations) for k in keys if k.generation == generation - 1}
    store.expire_keys(credential_id, now + overlap)
    store.add_keys(_keys(credential_id, generation, password, salts))
    return IssuedCredential(found.id, found.account, found.username, password)


def withdraw_credential(store: Credentials, credential_id: str, at: datetime) -> None:
    if not store.revoke(credential_id, at):
        raise CredentialNotFound(f"there is no active credential {credential_id!r}")


def credential_views(
    store: Credentials, now: datetime, account: str | None = None, include_revoked: bool = False
) -> list[CredentialView]:
    """The credentials (of ``account``), oldest first, as operators see them."""
    rows = store.listed(account, include_revoked)
    overlaps: dict[str, datetime] = {}
    newest: dict[str, tuple[int, datetime | None]] = {}
    mechanisms: dict[str, set[str]] = {}
    for k in store.all_keys(account):
        if k.valid_until is not None and k.valid_until > now:
            overlaps[k.credential_id] = max(k.valid_until, overlaps.get(k.credential_id, k.valid_until))
        if k.generation > newest.get(k.credential_id, (0, now))[0]:
            newest[k.credential_id] = (k.generation, k.created_at)
        mechanisms.setdefault(k.credential_id, set()).add(k.mechanism)
    return [
        CredentialView(
            r.id,
            r.account,
            r.name,
            r.username,
            "User:" + r.username,
            _state(r),
            r.created_at,
            r.revoked_at,
            None if r.revoked_at is not None else overlaps.get(r.id),
            newest[r.id][1] if newest.get(r.id, (1, now))[0] > 1 else None,
            (*sorted(mechanisms.get(r.id, ()), reverse=True), "PLAIN") if r.id in mechanisms else (),
        )
        for r in rows
    ]


def _state(r: CredentialRecord) -> str:
    return "revoked" if r.revoked_at is not None else "active"


def published_states(store: Credentials, now: datetime) -> list[Credential]:
    """Every credential's state as the gateways read it: an active one with its keys valid at ``now``."""
    by_id: dict[str, list[ScramKey]] = {}
    records = store.all_by_id()
    for k in store.all_keys():
        if k.valid_until is None or k.valid_until > now:
            by_id.setdefault(k.credential_id, []).append(
                ScramKey(k.mechanism, k.salt, k.iterations, k.stored_key, k.server_key, k.valid_until)
            )
    return [
        Credential(
            r.id, r.account, r.username, _state(r), () if r.revoked_at is not None else tuple(by_id.get(r.id, ()))
        )
        for r in records
    ]


def create_credential(engine: Engine, account: str, name: str | None = None) -> IssuedCredential:
    """A new credential of ``account``; its password is in the result and nowhere else."""
    with UnitOfWork(engine) as uow:
        return issue_credential(uow.credentials, account, name)


def rotate_credential(engine: Engine, credential_id: str, overlap: timedelta) -> IssuedCredential:
    """A new password for an active credential; the passwords before it stay valid for ``overlap``."""
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        return rotate_password(uow.credentials, credential_id, overlap, now)


def revoke_credential(engine: Engine, credential_id: str) -> None:
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        record = uow.credentials.get_active(credential_id)
        withdraw_credential(uow.credentials, credential_id, now)
        assert record is not None  # withdraw_credential refuses a credential not active
        data = {"id": record.id, "name": record.name, "username": record.username, "revoked_at": _instant(now)}
        uow.webhooks.emit(new_event("credential.revoked", record.account, {"credential": data}, now))


def list_credentials(engine: Engine, account: str | None = None, include_revoked: bool = False) -> list[CredentialView]:
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        return credential_views(uow.credentials, now, account, include_revoked)


def _published(engine: Engine) -> list[Credential]:
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        return published_states(uow.credentials, now)


def publish_credentials(
    engine: Engine, kafka_config: dict[str, Any], topic: str, replication: int = -1, skip_empty: bool = False
) -> int:
    """Publish every credential's current state (the database's) to ``topic``; how many (with
    ``skip_empty``, nothing at all — not even the topic — while no credential was ever issued).
    Raises :class:`CredentialError` if the cluster does not take them."""
    credentials = _published(engine)
    if skip_empty and not credentials:
        return 0
    try:
        return publish_records(kafka_config, topic, ((c.id.encode(), encode(c)) for c in credentials), replication)
    except PublishError as exc:
        raise CredentialError(f"{exc}; run streamtoll credentials publish when the cluster answers") from None
