"""`GET /v1/rates` for "now" is shared between identical requests and refreshed in the background."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from services.common.db import make_engine
from services.common.migrate import ensure_schema
from services.domain.book import BookWrite
from services.domain.rates import Counts
from services.scorer.sink import DbSink
from tests.support.pipeline_util import api_ready
from tests.support.processes import Service, eventually, free_port

pytestmark = pytest.mark.integration


async def test_rates_answers_are_shared_then_refreshed(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    sink = DbSink(engine)
    minute = int(datetime.now(tz=UTC).timestamp() // 60 * 60_000) - 120_000

    await sink.claim([0])
    state = {"offset": 0, "verdicts": 0}

    async def write(verdicts: int) -> None:
        """The bucket's verdicts brought to ``verdicts`` (a write of the difference)."""
        state["offset"] += 1
        row = Counts(verdicts=verdicts - state["verdicts"], errors=1 if state["offset"] == 1 else 0)
        state["verdicts"] = verdicts
        await sink.write_book(BookWrite({0: ({("SCAMS_AND_FRAUD", "V01", "DE", minute): row}, state["offset"])}))

    await write(100)
    port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_API_RATES_CACHE_S": "3"}
    spawn(["api", "--port", str(port)], env, "api")
    query = {"policy_label": "SCAMS_AND_FRAUD", "vendor_id": "V01", "window": "1h"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)

        async def verdicts() -> int:
            r = await client.get("/v1/rates", params=query)
            assert r.status_code == 200, r.text
            return int(r.json()["items"][0]["verdicts"])

        assert await verdicts() == 100
        await write(250)
        # The answer computed before the write is served until a refresh after the cache time
        # has finished: the request right after the write still gets it (fresh or stale).
        assert await verdicts() == 100
        other = await client.get("/v1/rates", params={**query, "vendor_id": "V02"})
        assert other.json()["items"] == []  # another query is its own entry, computed now

        async def refreshed() -> bool:
            return await verdicts() == 250

        await eventually(refreshed, 30, interval=0.5)
    await engine.dispose()
