"""API keys with roles: generated once, stored as SHA-256 digests, compared in constant time.

A key reads ``modq_<key_id>_<secret>``: the key id finds the row, the secret (32 random bytes,
so a plain SHA-256 is as strong as a slow hash would be) is checked against the stored digest
with ``hmac.compare_digest``. The key itself is shown once, at creation, and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import api_keys

Role = Literal["viewer", "operator", "admin", "publisher"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin", "publisher")
# viewer < operator < admin for people; publisher is for upstream systems and may only send events.
_GRANTS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer"}),
    "operator": frozenset({"viewer", "operator"}),
    "admin": frozenset({"viewer", "operator", "admin", "publisher"}),
    "publisher": frozenset({"publisher"}),
}
PREFIX = "modq"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        """An admin may do what an operator may, an operator what a viewer may; a publisher only publishes."""
        return needed in _GRANTS[self.role]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_from_headers(headers: Mapping[str, str]) -> str:
    """The API key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; "" if none.

    >>> key_from_headers({"authorization": "Bearer modq_k1_s"}), key_from_headers({"x-api-key": "k"})
    ('modq_k1_s', 'k')
    """
    header = headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else headers.get("x-api-key", "")


def split_key(key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None.

    >>> split_key("modq_k1a2b3c4_s3cr3t")
    ('k1a2b3c4', 's3cr3t')
    >>> split_key("nonsense") is None
    True
    """
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(engine: AsyncEngine, name: str, role: Role) -> tuple[str, str]:
    """Create a key; returns (key_id, the key). Only the digest is stored."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = "k" + secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        await conn.execute(
            api_keys.insert().values(
                key_id=key_id, name=name, role=role, secret_sha256=digest(secret), created_at=datetime.now(tz=UTC)
            )
        )
    return key_id, f"{PREFIX}_{key_id}_{secret}"


async def revoke_key(engine: AsyncEngine, key_id: str) -> bool:
    async with engine.begin() as conn:
        result = await conn.execute(
            update(api_keys)
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(tz=UTC))
        )
    return bool(result.rowcount)


async def list_keys(engine: AsyncEngine) -> list[dict[str, object]]:
    cols = [api_keys.c[c] for c in ("key_id", "name", "role", "created_at", "revoked_at")]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(*cols).order_by(api_keys.c.created_at))).mappings().all()
    return [dict(r) for r in rows]


_DUMMY = digest("not-a-key")


async def authenticate(engine: AsyncEngine, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None otherwise (same work either way)."""
    parts = split_key(key)
    key_id, secret = parts if parts else ("", "")
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(api_keys.c.name, api_keys.c.role, api_keys.c.secret_sha256).where(
                    api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)
                )
            )
        ).first()
    stored = row.secret_sha256 if row else _DUMMY
    ok = hmac.compare_digest(digest(secret).encode(), stored.encode())
    if not (ok and row and parts):
        return None
    return Principal(key_id=key_id, name=row.name, role=row.role)


class KeyCache:
    """authenticate() with a short memory: valid keys for ``ttl_s``, unknown ones for ``negative_ttl_s``.

    For hot paths (ingest's HTTP endpoint): a revoked key stops working within ``ttl_s``, and a
    brief database outage does not stop publishers whose keys were seen recently.
    """

    def __init__(self, engine: AsyncEngine, ttl_s: float = 60.0, negative_ttl_s: float = 5.0) -> None:
        self.engine, self.ttl_s, self.negative_ttl_s = engine, ttl_s, negative_ttl_s
        self._seen: dict[str, tuple[Principal | None, float]] = {}

    async def authenticate(self, key: str, now: float) -> Principal | None:
        slot = digest(key)
        hit = self._seen.get(slot)
        if hit is not None and hit[1] > now:
            return hit[0]
        who = await authenticate(self.engine, key)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[slot] = (who, now + (self.ttl_s if who else self.negative_ttl_s))
        return who
