"""``/v1/history``: every state change of every alert and pair, who and when."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from services.api.deps import EngineDep, reader
from services.api.queries import aware, history_page
from services.api.schemas import HistoryItem, HistoryList

router = APIRouter(dependencies=[Depends(reader)])


@router.get("/v1/history", response_model=HistoryList)
async def history(
    engine: EngineDep,
    policy_label: str | None = None,
    vendor_id: str | None = None,
    action: str | None = Query(None, description="fired, resolved, acknowledged, silenced, commented, ..."),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> HistoryList:
    """Every state change of every alert and pair (who and when), newest recorded first, keyset-paginated.

    ``at`` is when it happened (event time for the detector's changes), ``recorded_at`` when modq wrote it.
    """
    rows, next_cursor = await history_page(
        engine, limit, cursor, policy_label=policy_label, vendor_id=vendor_id, action=action
    )
    return HistoryList(items=[HistoryItem.model_validate(aware(r)) for r in rows], next_cursor=next_cursor)
