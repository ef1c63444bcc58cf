"""``/v1/rates``: error rates per pair over event-time windows, with Wilson 95% intervals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.deps import EngineDep, SettingsDep, reader
from services.api.queries import bucket_sums, utc, window_start
from services.api.schemas import RateItem, RateList, Window
from services.domain.rates import WINDOWS_MS, RateSummary

router = APIRouter(dependencies=[Depends(reader)])


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A background refresh's failure is seen by whoever awaits it, or by nobody: not an error log."""
    if not task.cancelled():
        task.exception()


@dataclass
class RatesEntry:
    """One cached ``/v1/rates`` answer for "now": served until ``fresh_until``, and after that
    still served (stale) while one recomputation runs, so no request waits for a recomputation
    once a first answer exists."""

    fresh_until: float = 0.0
    answer: RateList | None = None
    refreshing: asyncio.Task[RateList] | None = None


class RatesCache:
    """Answers for "now", shared between identical requests: one computation per ``ttl_s``."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.entries: dict[tuple[object, ...], RatesEntry] = {}

    async def get(self, key: tuple[object, ...], compute: Callable[[], Coroutine[Any, Any, RateList]]) -> RateList:
        """The answer for ``key``; ``compute`` is called only when a recomputation is due."""
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.MAX_ENTRIES:
                self.entries.clear()
            entry = self.entries[key] = RatesEntry()
        now = time.monotonic()
        if now >= entry.fresh_until and entry.refreshing is None:
            entry.fresh_until = now + self.ttl_s
            entry.refreshing = asyncio.create_task(self._refresh(entry, compute()))
            entry.refreshing.add_done_callback(_retrieve)
        if entry.answer is not None:
            return entry.answer  # (stale by at most the cache time plus one computation)
        assert entry.refreshing is not None
        return await asyncio.shield(entry.refreshing)  # the first answer: every caller waits for it

    @staticmethod
    async def _refresh(entry: RatesEntry, computation: Coroutine[Any, Any, RateList]) -> RateList:
        try:
            entry.answer = await computation
            return entry.answer
        except BaseException:
            entry.fresh_until, entry.answer = 0.0, None  # nothing stale after a failure: the next request retries
            raise
        finally:
            entry.refreshing = None


def rates_cache(request: Request) -> RatesCache:
    cache: RatesCache = request.app.state.rates_cache
    return cache


async def compute_rates(
    engine: AsyncEngine,
    policy_label: str | None,
    vendor_id: str | None,
    market: str | None,
    window: Window | None,
    by_market: bool,
    as_of: datetime | None,
) -> RateList:
    end = utc(as_of) or datetime.now(tz=UTC)
    if not 1970 <= end.year <= 9998:  # the windows must fit in a datetime (found by schemathesis)
        raise HTTPException(400, "as_of must be between the years 1970 and 9998")
    split = by_market or market is not None
    items: list[RateItem] = []
    for name in [window] if window else list(WINDOWS_MS):
        start = window_start(end, WINDOWS_MS[name])
        sums = await bucket_sums(
            engine, start, end, by_market=split, policy_label=policy_label, vendor_id=vendor_id, market=market
        )
        for group, counts in sums:
            summary = RateSummary.from_counts(counts)
            items.append(
                RateItem(
                    policy_label=group["policy_label"],
                    vendor_id=group["vendor_id"],
                    market=group["market"] if split else None,
                    window=name,
                    window_start=start,
                    window_end=end,
                    verdicts=summary.verdicts,
                    errors=summary.errors,
                    error_rate=summary.error_rate,
                    ci_low=summary.ci_low,
                    ci_high=summary.ci_high,
                    by_error_type=dict(summary.by_error_type),
                    unable_to_judge=summary.unable_to_judge,
                    decisions=summary.decisions,
                    appeals=summary.appeals,
                    overturned=summary.overturned,
                    weighted_error_rate=summary.weighted_error_rate,
                    weighted_ci_low=summary.weighted_ci_low,
                    weighted_ci_high=summary.weighted_ci_high,
                    effective_verdicts=summary.effective_verdicts,
                )
            )
    return RateList(items=items)


@router.get("/v1/rates", response_model=RateList)
async def get_rates(
    engine: EngineDep,
    settings: SettingsDep,
    cache: Annotated[RatesCache, Depends(rates_cache)],
    policy_label: str | None = None,
    vendor_id: str | None = None,
    market: str | None = None,
    window: Window | None = Query(None, description="1h, 24h or 7d; all three when omitted"),
    by_market: bool = Query(False, description="split each (policy_label, vendor_id) by market"),
    as_of: datetime | None = Query(None, description="end of the windows (event time); default now"),
) -> RateList:
    """Error rates per (policy_label, vendor_id) over event-time windows, with Wilson 95% intervals.

    Answers for "now" (no ``as_of``) are shared between identical requests: one computation
    per ``MODQ_API_RATES_CACHE_S`` seconds, and while it runs the previous answer is served.
    """

    def compute() -> Coroutine[Any, Any, RateList]:
        return compute_rates(engine, policy_label, vendor_id, market, window, by_market, as_of)

    if as_of is None and settings.api_rates_cache_s > 0:
        return await cache.get((policy_label, vendor_id, market, window, by_market), compute)
    return await compute()
