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

from sqlalchemy import Engine, insert, select, update

from billing.adapters.control import publish_records
from billing.adapters.models import AccountRow, CredentialKeyRow, CredentialRow
from billing.errors import CredentialError, CredentialNotFound, PublishError
from metering.credentials import MECHANISMS, Credential, ScramKey, encode, scram_key

__all__ = [
    "CredentialView",
    "IssuedCredential",
    "create_credential",
    "credential_doc",
    "credential_principals",
    "list_credentials",
    "publish_credentials",
    "revoke_credential",
    "rotate_credential",
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


def _keys(conn: Any, credential_id: str, generation: int, password: str, salts: dict[str, tuple[bytes, int]]) -> None:
    for mechanism in MECHANISMS:
        salt, iterations = salts.get(mechanism, (None, 0))
        key = scram_key(mechanism, password, salt) if salt is None else scram_key(mechanism, password, salt, iterations)
        conn.execute(
            insert(CredentialKeyRow).values(
                credential_id=credential_id,
                mechanism=mechanism,
                generation=generation,
                salt=key.salt,
                iterations=key.iterations,
                stored_key=key.stored_key,
                server_key=key.server_key,
            )
        )


def create_credential(engine: Engine, account: str, name: str | None = None) -> IssuedCredential:
    """A new credential of ``account``; its password is in the result and nowhere else."""
    name = name or "cred-" + secrets.token_hex(3)
    if not NAME.match(name):
        raise CredentialError(
            f"--name {name!r} must be 1–63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    username = f"{account}/{name}"
    password = _password()
    with engine.begin() as conn:
        if conn.execute(select(AccountRow.code).where(AccountRow.code == account)).first() is None:
            raise CredentialNotFound(f"there is no account {account!r}; load accounts first")
        if conn.execute(select(CredentialRow.id).where(CredentialRow.username == username)).first() is not None:
            raise CredentialError(f"account {account!r} already has a credential named {name!r}")
        cid = "cred_" + secrets.token_hex(6)
        conn.execute(insert(CredentialRow).values(id=cid, account_code=account, name=name, username=username))
        _keys(conn, cid, 1, password, {})
    return IssuedCredential(cid, account, username, password)


def rotate_credential(engine: Engine, credential_id: str, overlap: timedelta) -> IssuedCredential:
    """A new password for an active credential; the passwords before it stay valid for ``overlap``."""
    now = datetime.now(UTC)
    password = _password()
    with engine.begin() as conn:
        row = conn.execute(
            select(CredentialRow).where(CredentialRow.id == credential_id, CredentialRow.revoked_at.is_(None))
        ).first()
        if row is None:
            raise CredentialNotFound(f"there is no active credential {credential_id!r}")
        keys = conn.execute(select(CredentialKeyRow).where(CredentialKeyRow.credential_id == credential_id)).all()
        generation = max(k.generation for k in keys) + 1
        salts = {k.mechanism: (k.salt, k.iterations) for k in keys if k.generation == generation - 1}
        conn.execute(
            update(CredentialKeyRow)
            .where(CredentialKeyRow.credential_id == credential_id, CredentialKeyRow.valid_until.is_(None))
            .values(valid_until=now + overlap)
        )
        _keys(conn, credential_id, generation, password, salts)
    return IssuedCredential(row.id, row.account_code, row.username, password)


def revoke_credential(engine: Engine, credential_id: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(
            update(CredentialRow)
            .where(CredentialRow.id == credential_id, CredentialRow.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        if done.rowcount != 1:
            raise CredentialNotFound(f"there is no active credential {credential_id!r}")


def list_credentials(engine: Engine, account: str | None = None, include_revoked: bool = False) -> list[CredentialView]:
    now = datetime.now(UTC)
    query = select(CredentialRow).order_by(CredentialRow.created_at, CredentialRow.id)
    if account is not None:
        query = query.where(CredentialRow.account_code == account)
    if not include_revoked:
        query = query.where(CredentialRow.revoked_at.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        overlaps: dict[str, datetime] = {}
        newest: dict[str, tuple[int, datetime]] = {}
        mechanisms: dict[str, set[str]] = {}
        keys = select(
            CredentialKeyRow.credential_id,
            CredentialKeyRow.mechanism,
            CredentialKeyRow.generation,
            CredentialKeyRow.created_at,
            CredentialKeyRow.valid_until,
        )
        if account is not None:
            keys = keys.join(CredentialRow, CredentialRow.id == CredentialKeyRow.credential_id).where(
                CredentialRow.account_code == account
            )
        for k in conn.execute(keys):
            if k.valid_until is not None and k.valid_until > now:
                overlaps[k.credential_id] = max(k.valid_until, overlaps.get(k.credential_id, k.valid_until))
            if k.generation > newest.get(k.credential_id, (0, now))[0]:
                newest[k.credential_id] = (k.generation, k.created_at)
            mechanisms.setdefault(k.credential_id, set()).add(k.mechanism)
    return [
        CredentialView(
            r.id,
            r.account_code,
            r.name,
            r.username,
            "User:" + r.username,
            "revoked" if r.revoked_at is not None else "active",
            r.created_at,
            r.revoked_at,
            None if r.revoked_at is not None else overlaps.get(r.id),
            newest[r.id][1] if newest.get(r.id, (1, now))[0] > 1 else None,
            (*sorted(mechanisms.get(r.id, ()), reverse=True), "PLAIN") if r.id in mechanisms else (),
        )
        for r in rows
    ]


def credential_principals(engine: Engine) -> dict[str, str]:
    """principal → account of every credential ever issued (revoked ones too: their past traffic
    stays theirs)."""
    with engine.connect() as conn:
        return {
            "User:" + r.username: r.account_code
            for r in conn.execute(select(CredentialRow.username, CredentialRow.account_code))
        }


def _published(engine: Engine) -> list[Credential]:
    now = datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(select(CredentialRow).order_by(CredentialRow.id)).all()
        keys = conn.execute(
            select(CredentialKeyRow).order_by(
                CredentialKeyRow.credential_id, CredentialKeyRow.generation, CredentialKeyRow.mechanism
            )
        ).all()
    by_id: dict[str, list[ScramKey]] = {}
    for k in keys:
        if k.valid_until is None or k.valid_until > now:
            by_id.setdefault(k.credential_id, []).append(
                ScramKey(k.mechanism, k.salt, k.iterations, k.stored_key, k.server_key, k.valid_until)
            )
    return [
        Credential(
            r.id,
            r.account_code,
            r.username,
            "revoked" if r.revoked_at is not None else "active",
            () if r.revoked_at is not None else tuple(by_id.get(r.id, ())),
        )
        for r in rows
    ]


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
