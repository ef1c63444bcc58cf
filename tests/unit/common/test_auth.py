"""API keys: roles are ordered, only digests are stored, revoked and forged keys are refused."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from services.common.auth import Principal, authenticate, create_key, digest, revoke_key
from services.common.db import api_keys, make_engine
from services.common.migrate import ensure_schema


def test_roles_are_ordered() -> None:
    admin, operator, viewer = (Principal("k", "n", r) for r in ("admin", "operator", "viewer"))  # type: ignore[arg-type]
    assert admin.may("operator") and operator.may("operator") and not viewer.may("operator")
    assert viewer.may("viewer") and not operator.may("admin")
    publisher = Principal("k", "n", "publisher")
    assert publisher.may("publisher") and not publisher.may("viewer") and not operator.may("publisher")
    assert admin.may("publisher")


@pytest.mark.integration
async def test_keys_are_stored_hashed_checked_and_revocable(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await ensure_schema(engine, auto_migrate=True)
        key_id, key = await create_key(engine, "oncall-pm", "operator")
        async with engine.connect() as conn:
            stored = (await conn.execute(select(api_keys.c.secret_sha256).where(api_keys.c.key_id == key_id))).scalar()
        secret = key.split("_", 2)[2]
        assert stored == digest(secret) and secret not in str(stored)

        who = await authenticate(engine, key)
        assert who == Principal(key_id, "oncall-pm", "operator")
        assert await authenticate(engine, key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # forged secret
        assert await authenticate(engine, f"modq_kdoesnotexist_{secret}") is None
        assert await authenticate(engine, "garbage") is None
        with pytest.raises(ValueError):
            await create_key(engine, "x", "root")  # type: ignore[arg-type]

        assert await revoke_key(engine, key_id) and not await revoke_key(engine, key_id)
        assert await authenticate(engine, key) is None
    finally:
        await engine.dispose()
