"""Kafka credentials streamtoll issues, as the credential store publishes them and gateways read
them: SCRAM salted keys (RFC 5802, RFC 7677) and each credential's state.

Standard library only, and neutral: billing (which issues credentials and publishes them) and
the gateway (which authenticates clients with them) both import this module and neither imports
the other (import-linter).

A credential is published on ``TOPIC_CREDENTIALS`` (default ``streamtoll.credentials``, compacted)
keyed by its id, the full record every time (:func:`encode` / :func:`decode`): a reader keeps the
newest record per id, so publishing the same state twice, or in a later run, changes nothing.
Only salted keys travel: ``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and
``ServerKey = HMAC(SaltedPassword, "Server Key")`` prove a password without being one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "MECHANISMS",
    "SCRAM_ITERATIONS",
    "Credential",
    "ScramKey",
    "decode",
    "encode",
    "scram_key",
]

MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
SCRAM_ITERATIONS = 8192  # Kafka's kafka-configs default is 4096; RFC 7677 asks for at least 4096
_HASH = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def hash_name(mechanism: str) -> str:
    return _HASH[mechanism]


@dataclass(frozen=True)
class ScramKey:
    """One password's SCRAM keys for one mechanism; ``valid_until`` (UTC) ends an old password's
    overlap after a rotation (None: valid while the credential is active). Also carries a PLAIN
    check: PLAIN recomputes the keys from the password it receives."""

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    valid_until: datetime | None = None

    def valid(self, now: datetime) -> bool:
        return self.valid_until is None or now < self.valid_until

    def matches_password(self, password: str) -> bool:
        other = scram_key(self.mechanism, password, self.salt, self.iterations)
        return hmac.compare_digest(other.stored_key, self.stored_key)


def scram_key(mechanism: str, password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> ScramKey:
    """The SCRAM keys of ``password`` (a fresh 32-byte salt unless given)."""
    h = _HASH[mechanism]
    salt = os.urandom(32) if salt is None else salt
    salted = hashlib.pbkdf2_hmac(h, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    stored_key = hashlib.new(h, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", h).digest()
    return ScramKey(mechanism, salt, iterations, stored_key, server_key)


@dataclass(frozen=True)
class Credential:
    """A credential as published: ``username`` (``<account>/<name>``) is what a client logs in
    with, ``principal`` (``User:<username>``) what its traffic is metered as; ``state`` is
    ``active`` or ``revoked``; ``keys`` every password still valid (two during a rotation's overlap)."""

    id: str
    account: str
    username: str
    state: str
    keys: tuple[ScramKey, ...]

    @property
    def principal(self) -> str:
        return "User:" + self.username

    def usable_keys(self, mechanism: str, now: datetime) -> list[ScramKey]:
        if self.state != "active":
            return []
        return [k for k in self.keys if k.mechanism == mechanism and k.valid(now)]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def encode(credential: Credential) -> bytes:
    doc: dict[str, Any] = {
        "id": credential.id,
        "account": credential.account,
        "username": credential.username,
        "principal": credential.principal,
        "state": credential.state,
        "keys": [
            {
                "mechanism": k.mechanism,
                "salt": _b64(k.salt),
                "iterations": k.iterations,
                "stored_key": _b64(k.stored_key),
                "server_key": _b64(k.server_key),
                "valid_until": None if k.valid_until is None else k.valid_until.isoformat(),
            }
            for k in credential.keys
        ],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(value: bytes) -> Credential:
    """A published credential (ValueError/KeyError if the record is not one)."""
    doc = json.loads(value)
    keys = tuple(
        ScramKey(
            k["mechanism"],
            base64.b64decode(k["salt"]),
            int(k["iterations"]),
            base64.b64decode(k["stored_key"]),
            base64.b64decode(k["server_key"]),
            None if k.get("valid_until") is None else datetime.fromisoformat(k["valid_until"]),
        )
        for k in doc["keys"]
        if k["mechanism"] in _HASH
    )
    return Credential(str(doc["id"]), str(doc["account"]), str(doc["username"]), str(doc["state"]), keys)
