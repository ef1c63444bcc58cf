"""Alembic migrations against real PostgreSQL; services refuse to start on an old schema."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import inspect

from services.common.db import make_engine
from services.common.migrate import SchemaOutOfDate, current_revision, downgrade, ensure_schema, head_revision, upgrade

pytestmark = pytest.mark.integration


async def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"rate_buckets", "alerts", "alembic_version"} <= tables
        await downgrade(engine, "base")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables == {"alembic_version"}
        await upgrade(engine)
        await upgrade(engine)  # idempotent
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_refuses_an_unmigrated_database_when_auto_migrate_is_off(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with pytest.raises(SchemaOutOfDate, match="modq migrate"):
            await ensure_schema(engine, auto_migrate=False)
    finally:
        await engine.dispose()


def test_api_exits_with_a_clear_message_on_an_unmigrated_database(
    database_url: str, service_env: dict[str, str]
) -> None:
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_AUTO_MIGRATE": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "api", "--port", "0"], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 2
    assert b"run `modq migrate`" in proc.stderr


async def test_concurrent_upgrades_do_not_collide(database_url: str) -> None:
    import asyncio

    engines = [make_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade(e) for e in engines))
        assert await current_revision(engines[0]) == head_revision()
    finally:
        for e in engines:
            await e.dispose()
