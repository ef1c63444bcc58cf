"""The console overview's cache: one computation at a time per (window, market), the previous answer
served while it runs, a failed computation retried by the next request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from services.api.ui import pages
from services.api.ui.pages import Overview, OverviewCache


class Counting(OverviewCache):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.gate = asyncio.Event()
        self.fail = False

    async def compute(self, engine: Any, settings: Any, window: str, market: str | None) -> Overview:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("database down")
        return Overview(window, market, None, datetime.now(tz=UTC), [], [], [], {}, [], pages.Markup(str(self.calls)))


async def test_concurrent_first_loads_share_one_computation() -> None:
    cache = Counting()
    waiting = [asyncio.create_task(cache.get(None, None, "24h", None)) for _ in range(20)]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    cache.gate.set()
    answers = await asyncio.gather(*waiting)
    assert cache.calls == 1
    assert all(a is answers[0] for a in answers)


async def test_stale_answer_is_served_while_one_recomputation_runs() -> None:
    cache = Counting()
    cache.gate.set()
    first = await cache.get(None, None, "24h", None)  # type: ignore[arg-type]
    cache.gate.clear()
    cache.entries[("24h", None)].fresh_until = 0.0  # the answer has aged past its time
    again = [await cache.get(None, None, "24h", None) for _ in range(5)]  # type: ignore[arg-type]
    assert all(a is first for a in again)  # nobody waited for the running recomputation
    await asyncio.sleep(0)
    assert cache.calls == 2  # and only one was started
    cache.gate.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert (await cache.get(None, None, "24h", None)).live_html == "2"  # type: ignore[arg-type]


async def test_a_failed_computation_is_retried_by_the_next_request() -> None:
    cache = Counting()
    cache.fail = True
    cache.gate.set()
    with pytest.raises(RuntimeError):
        await cache.get(None, None, "1h", "DE")  # type: ignore[arg-type]
    cache.fail = False
    assert (await cache.get(None, None, "1h", "DE")).window == "1h"  # type: ignore[arg-type]
    assert cache.calls == 2
