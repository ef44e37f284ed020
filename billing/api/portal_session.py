"""The partner portal's sessions: a signed, stateless cookie, and CSRF tokens bound to it.

Signing in presents a partner API key once (a POSTed form field); the key is checked like a
bearer key and never stored in the cookie, a URL or the browser's storage. The cookie holds only
``{session id, key id, account, expiry}`` and an HMAC-SHA256 of them under the server secret
(``STREAMTOLL_PORTAL_SECRET``): it cannot be forged or altered without the secret. Every request
also looks the key id up, so revoking the API key ends its sessions at once.

Why stateless (no session table): nothing to migrate, clean up or share between API replicas
(they share the secret). The cost: signing out clears the cookie in that browser, but a copy of
the cookie taken before would stay valid until it expires (``STREAMTOLL_PORTAL_SESSION_HOURS``,
default 8) — unless the key is revoked. The cookie is HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it) and Secure with ``STREAMTOLL_PORTAL_HTTPS=true``
(then also named with the ``__Host-`` prefix: no subdomain can set it).

CSRF: every POST form carries a token. Signed in, it is an HMAC of the session id (a page of
another site cannot read it, and it dies with the session). The sign-in form, before any
session, uses a double-submit nonce: a random value in a short-lived cookie and the same value in
the form, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response

__all__ = ["Session", "Sessions"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    sid: str
    key_id: str
    account: str
    expires: int  # epoch seconds


class Sessions:
    """Issues and reads session cookies and CSRF tokens under one secret."""

    def __init__(self, secret: bytes | None, hours: float, https: bool, clock: Callable[[], float] = time.time) -> None:
        # no secret set: a random one for this process (sessions end when it restarts)
        self._secret = secret or secrets.token_bytes(32)
        self.lifetime = int(hours * 3600)
        self.https = https
        self.clock = clock
        prefix = "__Host-" if https else ""
        self.cookie = prefix + "stk_portal"
        self.nonce_cookie = prefix + "stk_portal_signin"

    def _mac(self, purpose: str, data: bytes) -> str:
        return _b64(hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest())

    def issue(self, key_id: str, account: str) -> str:
        body = {"s": secrets.token_urlsafe(16), "k": key_id, "a": account, "e": int(self.clock()) + self.lifetime}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return payload + "." + self._mac("session", payload.encode())

    def read(self, value: str | None) -> Session | None:
        """The session a cookie value holds, if it is ours, unaltered and not expired."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac("session", payload.encode())):
            return None
        try:
            doc = json.loads(_unb64(payload))
            found = Session(str(doc["s"]), str(doc["k"]), str(doc["a"]), int(doc["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return found if found.expires > self.clock() else None

    def csrf(self, session: Session) -> str:
        return self._mac("csrf", session.sid.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf(session))

    @staticmethod
    def nonce() -> str:
        return secrets.token_urlsafe(24)

    @staticmethod
    def nonce_ok(cookie: str | None, token: str | None) -> bool:
        return bool(cookie) and token is not None and hmac.compare_digest(cookie or "", token)

    def set(self, response: Response, name: str, value: str, max_age: int | None = None) -> None:
        """Set one of the portal's cookies (HttpOnly, SameSite=Strict, Secure behind https)."""
        response.set_cookie(
            name,
            value,
            max_age=self.lifetime if max_age is None else max_age,
            path="/",
            secure=self.https,
            httponly=True,
            samesite="strict",
        )

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=self.https, httponly=True, samesite="strict")
