"""Sign-in for the console: an API key, once per browser session, traded for a signed session cookie.

The cookie (``modq_session``: HttpOnly, SameSite=Strict, Secure when the console is served over
HTTPS) holds the key's id, name and role and an expiry, signed with HMAC-SHA256 under
``MODQ_UI_SESSION_SECRET``; the key itself never leaves the sign-in request. Every form carries a
CSRF token derived from the session (HMAC of the session's signature), checked on every post; a key
revoked since sign-in is refused on the next action (its id is looked up again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from services.common.auth import Principal, Role

COOKIE = "modq_session"
SESSION_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    name: str
    role: Role
    expires: int
    signature: str

    @property
    def principal(self) -> Principal:
        return Principal(key_id=self.key_id, name=self.name, role=self.role)

    def may(self, role: Role) -> bool:
        return self.principal.may(role)


class Sessions:
    """Issues and checks session cookies and CSRF tokens under one secret."""

    def __init__(self, secret: str | None) -> None:
        # No secret configured: one per process (sessions end when the API restarts; set
        # MODQ_UI_SESSION_SECRET, the same on every replica, in production).
        self._key = (secret or secrets.token_hex(32)).encode()

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def issue(self, who: Principal, now: float | None = None) -> str:
        """The cookie value for a signed-in key."""
        expires = int((now or time.time()) + SESSION_S)
        payload = orjson.dumps({"k": who.key_id, "n": who.name, "r": who.role, "e": expires})
        return base64.urlsafe_b64encode(payload).decode() + "." + self._sign(payload)

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie, or None when absent, forged, tampered with or expired."""
        if not cookie or "." not in cookie:
            return None
        encoded, signature = cookie.rsplit(".", 1)
        try:
            payload = base64.urlsafe_b64decode(encoded.encode())
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        data = orjson.loads(payload)
        if data["e"] < (now or time.time()) or data["r"] not in ("viewer", "operator", "admin", "publisher"):
            return None
        return Session(data["k"], data["n"], data["r"], int(data["e"]), signature)

    def csrf(self, session: Session) -> str:
        """The token a session's forms carry."""
        return self._sign(b"csrf|" + session.signature.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(session), token or "")
