"""The server side of SASL, for clients that authenticate to the gateway itself
(``GATEWAY_AUTH=streamtoll``) with credentials streamtoll issued (:mod:`metering.credentials`).

* ``SCRAM-SHA-512`` / ``SCRAM-SHA-256`` (RFC 5802, RFC 7677): client-first → server-first
  (the credential's salt and iterations, the client's nonce extended) → client-final (the proof,
  checked against every password of the credential still valid — two during a rotation's overlap,
  which share the salt) → server-final ``v=`` (the server signature). No channel binding
  (``n`` or ``y`` GS2 flag), no authorization identity other than the user itself, no delegation
  tokens.
* ``PLAIN`` (RFC 4616), offered only on a TLS listener: the password is checked by recomputing its
  SCRAM-SHA-512 keys.

A failed exchange raises :class:`AuthenticationFailed` with a sentence the client may read (it never
says whether the user exists).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime

from gateway.principals import plain_username, scram_username
from metering.credentials import Credential, ScramKey, hash_name

__all__ = ["AuthenticationFailed", "PlainServer", "SaslServer", "ScramServer", "server_for"]

Lookup = Callable[[str], Credential | None]
_INVALID = "Authentication failed: invalid credentials"


class AuthenticationFailed(Exception):
    pass


class ScramServer:
    def __init__(self, mechanism: str, lookup: Lookup, now: Callable[[], datetime], nonce: str | None = None) -> None:
        self.mechanism = mechanism
        self.h = hash_name(mechanism)
        self.lookup = lookup
        self.now = now
        self.server_nonce = nonce or secrets.token_urlsafe(18)
        self.step_no = 0
        self.credential: Credential | None = None
        self.keys: list[ScramKey] = []
        self.gs2 = ""
        self.client_first_bare = ""
        self.server_first = ""
        self.nonce = ""
        self.done = False

    def step(self, data: bytes) -> bytes:
        """The answer to the client's next message; :attr:`done` once it is authenticated."""
        self.step_no += 1
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed("Authentication failed: the SCRAM message is not UTF-8") from None
        if self.step_no == 1:
            return self._first(data, text)
        if self.step_no == 2:
            return self._final(text)
        raise AuthenticationFailed("Authentication failed: the SCRAM exchange is over")

    def _first(self, data: bytes, text: str) -> bytes:
        name = scram_username(data)
        flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if name is None or flag not in ("n", "y"):
            raise AuthenticationFailed("Authentication failed: not a SCRAM client-first message this gateway takes")
        if authzid and authzid[2:].replace("=2C", ",").replace("=3D", "=") != name:
            raise AuthenticationFailed("Authentication failed: an authorization identity other than the user")
        attrs = bare.split(",")
        if len(attrs) < 2 or not attrs[1].startswith("r=") or len(attrs[1]) < 3:
            raise AuthenticationFailed("Authentication failed: the SCRAM client-first message has no nonce")
        credential = self.lookup(name)
        keys = credential.usable_keys(self.mechanism, self.now()) if credential is not None else []
        if credential is None or not keys:
            raise AuthenticationFailed(_INVALID)
        salts = {(k.salt, k.iterations) for k in keys}
        if len(salts) != 1:  # rotations keep the salt; a credential published otherwise takes its newest
            keys = keys[-1:]
        self.credential, self.keys = credential, keys
        self.gs2 = f"{flag},{authzid},"
        self.client_first_bare = bare
        self.nonce = attrs[1][2:] + self.server_nonce
        key = keys[0]
        self.server_first = f"r={self.nonce},s={base64.b64encode(key.salt).decode()},i={key.iterations}"
        return self.server_first.encode()

    def _final(self, text: str) -> bytes:
        attrs = text.split(",")
        if len(attrs) < 3 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise AuthenticationFailed("Authentication failed: not a SCRAM client-final message")
        proof_attr = attrs[-1]
        if not proof_attr.startswith("p="):
            raise AuthenticationFailed("Authentication failed: the SCRAM client-final message has no proof")
        try:
            binding = base64.b64decode(attrs[0][2:], validate=True).decode()
            proof = base64.b64decode(proof_attr[2:], validate=True)
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationFailed("Authentication failed: the SCRAM client-final message is malformed") from None
        if binding != self.gs2:
            raise AuthenticationFailed("Authentication failed: channel binding does not match the client-first")
        if attrs[1][2:] != self.nonce:
            raise AuthenticationFailed("Authentication failed: the nonce does not match")
        without_proof = text[: len(text) - len(proof_attr) - 1]
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        for key in self.keys:
            signature = hmac.new(key.stored_key, auth_message, self.h).digest()
            if len(proof) != len(signature):
                continue
            client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
            if hmac.compare_digest(hashlib.new(self.h, client_key).digest(), key.stored_key):
                self.done = True
                server_signature = hmac.new(key.server_key, auth_message, self.h).digest()
                return b"v=" + base64.b64encode(server_signature)
        raise AuthenticationFailed(_INVALID)


class PlainServer:
    def __init__(self, lookup: Lookup, now: Callable[[], datetime]) -> None:
        self.lookup = lookup
        self.now = now
        self.credential: Credential | None = None
        self.done = False

    def step(self, data: bytes) -> bytes:
        name = plain_username(data)
        parts = data.split(b"\0")
        if name is None or (parts[0] and parts[0] != parts[1]):
            raise AuthenticationFailed("Authentication failed: not a SASL PLAIN message this gateway takes")
        credential = self.lookup(name)
        try:
            password = parts[2].decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed(_INVALID) from None
        keys = credential.usable_keys("SCRAM-SHA-512", self.now()) if credential is not None else []
        if not any(k.matches_password(password) for k in keys):
            raise AuthenticationFailed(_INVALID)
        self.credential = credential
        self.done = True
        return b""


SaslServer = ScramServer | PlainServer


def server_for(mechanism: str, lookup: Lookup, now: Callable[[], datetime]) -> SaslServer:
    if mechanism == "PLAIN":
        return PlainServer(lookup, now)
    return ScramServer(mechanism, lookup, now)
