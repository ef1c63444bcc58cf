"""A fresh PostgreSQL database for one benchmark run (local trust auth, or MODQ_BENCH_PG_DSN)."""

from __future__ import annotations

import os
import uuid

import asyncpg

PG_ADMIN_DSN = os.environ.get("MODQ_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_database() -> tuple[str, str]:
    """(name, SQLAlchemy URL) of a new, empty database."""
    name = f"modq_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
