"""``/v1/alerts``: alert records, their CSV export and history, and the actions operators take."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.deps import EngineDep, Operator, PublisherDep, SettingsDep, reader
from services.api.queries import after, alert_history_rows, alert_query, aware, encode_cursor, load_alert
from services.api.schemas import (
    EXPORT_COLUMNS,
    AckRequest,
    AlertItem,
    AlertList,
    AlertState,
    CommentRequest,
    HistoryItem,
    HistoryList,
    ResolveRequest,
)
from services.common.auth import Principal
from services.common.config import ApiSettings
from services.common.evidence import Evidence, change_since, gather
from services.common.history import apply_action
from services.contracts.actions import new_action

router = APIRouter()
read = [Depends(reader)]
ALERT_FIELDS = tuple(f for f in AlertItem.model_fields if f != "links")


def links(settings: ApiSettings, row: Any) -> dict[str, str]:
    base = settings.public_api_url.rstrip("/")
    scoped = {k: row[k] for k in ("policy_label", "vendor_id") if row[k] != "*"}
    me = f"{base}/v1/alerts/{quote(str(row['alert_id']), safe='')}"
    out = {
        "page": f"{base}/ui/alerts/{quote(str(row['alert_id']), safe='')}",
        "self": me,
        "rates": f"{base}/v1/rates?{urlencode(scoped)}",
        "findings": f"{me}/findings",
        "rereview": f"{me}/rereview",
    }
    if row.get("parent_alert_id"):
        out["parent"] = f"{base}/v1/alerts/{quote(str(row['parent_alert_id']), safe='')}"
    return out


def _stored(row: Any) -> dict[str, Any]:
    return {k: orjson.loads(row[k]) if row.get(k) else None for k in ("attribution", "impact")}


def alert_item(settings: ApiSettings, row: dict[str, object], evidence: Evidence | None = None) -> AlertItem:
    data = aware(row)
    data.update(_stored(row))
    if evidence is not None:
        data.update(attribution=evidence.attribution, impact=evidence.impact)
    data["links"] = links(settings, row)
    return AlertItem.model_validate(data)


def alert_json(settings: ApiSettings, row: Any) -> dict[str, Any]:
    """An AlertItem for orjson (``OPT_NAIVE_UTC``: its datetimes as RFC 3339, naive ones from
    SQLite as UTC), without a model round trip (the list endpoint's hot path)."""
    out = {f: row[f] for f in ALERT_FIELDS if f not in ("attribution", "impact")}
    out.update(_stored(row))
    out["links"] = links(settings, row)
    return out


@router.get("/v1/alerts", response_model=AlertList, dependencies=read)
async def list_alerts(
    engine: EngineDep,
    settings: SettingsDep,
    status: AlertState | None = None,
    policy_label: str | None = None,
    vendor_id: str | None = None,
    rule: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> AlertList:
    """Alert history, newest first, keyset-paginated."""
    stmt = after(alert_query(status, policy_label, vendor_id, rule), cursor).limit(limit + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["started_at"], last["alert_id"])
    body = orjson.dumps(
        {"items": [alert_json(settings, r) for r in rows[:limit]], "next_cursor": next_cursor},
        option=orjson.OPT_NAIVE_UTC,
    )
    return Response(body, media_type="application/json")  # type: ignore[return-value]


@router.get(
    "/v1/alerts/export.csv",
    dependencies=read,
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def export_alerts(
    engine: EngineDep,
    status: AlertState | None = None,
    policy_label: str | None = None,
    vendor_id: str | None = None,
    rule: str | None = None,
) -> StreamingResponse:
    """Every matching alert as CSV, newest first (streamed page by page)."""
    base = alert_query(status, policy_label, vendor_id, rule)

    async def rows() -> AsyncIterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(EXPORT_COLUMNS)
        cursor: str | None = None
        while True:
            async with engine.connect() as conn:
                page = (await conn.execute(after(base, cursor).limit(1000))).mappings().all()
            for r in map(aware, page):
                writer.writerow([r[c].isoformat() if isinstance(r[c], datetime) else r[c] for c in EXPORT_COLUMNS])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if len(page) < 1000:
                return
            cursor = encode_cursor(page[-1]["started_at"], page[-1]["alert_id"])

    return StreamingResponse(
        rows(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="alerts.csv"'}
    )


@router.get("/v1/alerts/{alert_id}", response_model=AlertItem, dependencies=read)
async def get_alert(alert_id: str, engine: EngineDep, settings: SettingsDep) -> AlertItem:
    """One alert; while it fires, its attribution and impact are computed afresh from the counts."""
    row = await load_alert(engine, alert_id)
    evidence = None
    if row["status"] != "resolved" or row.get("impact") is None:
        evidence = await evidence_of(engine, row)
    return alert_item(settings, row, evidence)


async def since_of(engine: AsyncEngine, row: dict[str, Any]) -> datetime:
    """The change point an alert's evidence counts from (without the rest of the evidence)."""
    r = aware(row)
    return await change_since(
        engine,
        scope=r["scope"],
        policy_label=r["policy_label"],
        vendor_id=r["vendor_id"],
        rule=r["rule"],
        onset=r["onset_at"],
        end=r["resolved_at"],
        baseline=r["baseline_rate"],
        alarm=r["started_at"],
    )


async def evidence_of(engine: AsyncEngine, row: dict[str, Any]) -> Evidence:
    r = aware(row)
    return await gather(
        engine,
        scope=r["scope"],
        policy_label=r["policy_label"],
        vendor_id=r["vendor_id"],
        rule=r["rule"],
        onset=r["onset_at"],
        end=r["resolved_at"],
        baseline=r["baseline_rate"],
        alarm=r["started_at"],
    )


async def act_on_alert(
    engine: AsyncEngine,
    settings: ApiSettings,
    publisher: PublisherDep,
    *,
    alert_id: str,
    kind: str,
    who: Principal,
    by: str | None,
    comment: str | None,
) -> AlertItem:
    """Publish an operator's action on an alert, then apply it to the records."""
    row = await load_alert(engine, alert_id)
    action = new_action(
        action=kind,
        alert_id=alert_id,
        policy_label=row["policy_label"],
        vendor_id=row["vendor_id"],
        rule=row["rule"],
        actor=by or who.name,
        key_id=who.key_id,
        comment=comment,
    )
    await publisher.action(action)
    await apply_action(engine, action)
    return alert_item(settings, await load_alert(engine, alert_id))


@router.post("/v1/alerts/{alert_id}/ack", response_model=AlertItem)
async def acknowledge(
    alert_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    who: Operator,
    body: AckRequest | None = None,
) -> AlertItem:
    """Acknowledge a firing alert (idempotent; a resolved alert stays resolved)."""
    body = body or AckRequest()
    return await act_on_alert(
        engine, settings, publisher, alert_id=alert_id, kind="acknowledged", who=who, by=body.by, comment=body.comment
    )


@router.post("/v1/alerts/{alert_id}/resolve", response_model=AlertItem)
async def resolve(
    alert_id: str,
    engine: EngineDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    who: Operator,
    body: ResolveRequest | None = None,
) -> AlertItem:
    """Resolve an alert by hand; receivers are told, the detector keeps watching the pair."""
    body = body or ResolveRequest()
    return await act_on_alert(
        engine, settings, publisher, alert_id=alert_id, kind="resolved", who=who, by=body.by, comment=body.comment
    )


@router.post("/v1/alerts/{alert_id}/comments", response_model=AlertItem)
async def comment(
    alert_id: str,
    body: CommentRequest,
    engine: EngineDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    who: Operator,
) -> AlertItem:
    """Add a comment to an alert's history."""
    return await act_on_alert(
        engine, settings, publisher, alert_id=alert_id, kind="commented", who=who, by=body.by, comment=body.comment
    )


@router.get("/v1/alerts/{alert_id}/history", response_model=HistoryList, dependencies=read)
async def alert_history_of(alert_id: str, engine: EngineDep) -> HistoryList:
    """Every state change and comment of one alert, oldest first."""
    await load_alert(engine, alert_id)
    return HistoryList(items=[HistoryItem.model_validate(aware(r)) for r in await alert_history_rows(engine, alert_id)])
