"""From alert to action: the decisions to reverse and the decisions to look at again.

- ``/v1/alerts/{alert_id}/findings``: the confirmed-wrong decisions in the alert's scope since its
  onset (a QA verdict INCORRECT or an overturning appeal, still open), with what to do about each;
- ``/v1/alerts/{alert_id}/rereview``: a sample of the scope's decisions since onset that QA has not
  judged yet, stratified by the alert's attribution (more of it where the excess sits), for a
  re-review queue;
- ``/v1/remediations``: every finding, with filters.

Each is paginated (``next_cursor``) and, with ``format=csv``, a CSV file of the same rows.
"""

from __future__ import annotations

import base64
import csv
import io
import zlib
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from sqlalchemy import and_, or_, select

from services.api.deps import EngineDep, reader
from services.api.queries import aware, decode_cursor, encode_cursor, load_alert
from services.api.routes.alerts import evidence_of, since_of
from services.api.schemas import FindingList, RereviewList
from services.common.db import decision_samples, remediations
from services.contracts.alerts import RULE_OVER, RULE_UNDER
from services.contracts.pairs import SCOPE_LABEL, SCOPE_VENDOR
from services.domain.join import SLICE_DIMENSIONS

router = APIRouter(dependencies=[Depends(reader)])

RULE_ERROR_TYPE = {RULE_OVER: "OVER_ENFORCEMENT", RULE_UNDER: "UNDER_ENFORCEMENT"}
FINDING_COLUMNS = (
    "remediation_id",
    "decision_id",
    "entity_type",
    "entity_id",
    "policy_label",
    "vendor_id",
    "market",
    "action",
    "error_type",
    "recommendation",
    "finding",
    "status",
    "decided_at",
    "found_at",
    "evidence",
)
REREVIEW_COLUMNS = (
    "decision_id",
    "entity_type",
    "entity_id",
    "policy_label",
    "vendor_id",
    "market",
    *SLICE_DIMENSIONS,
    "action",
    "decided_at",
    "stratum",
)
MAX_POOL = 50_000  # unjudged sampled decisions a re-review sample is drawn from


def _row(r: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    row = aware(r)
    out = {c: row.get(c) for c in columns}
    if "evidence" in out and isinstance(out["evidence"], str):
        out["evidence"] = orjson.loads(out["evidence"])
    return out


def _answer(
    items: list[dict[str, Any]], next_cursor: str | None, fmt: str, columns: tuple[str, ...], name: str
) -> Response:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for item in items:
            writer.writerow(
                [
                    v.isoformat() if isinstance(v, datetime) else orjson.dumps(v).decode() if isinstance(v, dict) else v
                    for v in (item[c] for c in columns)
                ]
            )
        headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
        if next_cursor:
            headers["X-Next-Cursor"] = next_cursor
        return Response(buf.getvalue(), media_type="text/csv", headers=headers)
    body = orjson.dumps({"items": items, "next_cursor": next_cursor}, option=orjson.OPT_NAIVE_UTC)
    return Response(body, media_type="application/json")


def _scope_filter(table: Any, alert: dict[str, Any]) -> list[Any]:
    c = table.c
    if alert["scope"] == SCOPE_LABEL:
        return [c.policy_label == alert["policy_label"]]
    if alert["scope"] == SCOPE_VENDOR:
        return [c.vendor_id == alert["vendor_id"]]
    return [c.policy_label == alert["policy_label"], c.vendor_id == alert["vendor_id"]]


def _since_onset(table: Any, alert: dict[str, Any], since: datetime) -> list[Any]:
    c = table.c
    out = [c.decided_at >= since]
    if alert["resolved_at"] is not None:
        out.append(c.decided_at <= alert["resolved_at"])
    return out


async def _findings_page(engine: Any, where: list[Any], limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    c = remediations.c
    stmt = select(remediations).where(*where).order_by(c.decided_at, c.remediation_id).limit(limit + 1)
    if cursor:
        at, key = decode_cursor(cursor)
        stmt = stmt.where(or_(c.decided_at > at, and_(c.decided_at == at, c.remediation_id > key)))
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    nxt = None
    if len(rows) > limit:
        last = aware(rows[limit - 1])
        nxt = encode_cursor(last["decided_at"], last["remediation_id"])
    return list(rows[:limit]), nxt


CSV = {200: {"content": {"text/csv": {}}}}


@router.get("/v1/alerts/{alert_id}/findings", response_model=FindingList, responses=CSV)
async def findings(
    alert_id: str,
    engine: EngineDep,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """The decisions in the alert's scope since the change (the alert's impact ``since``, the change
    point of its counts) to its resolution that QA judged INCORRECT
    or an appeal overturned, still open, of the alert's error type, oldest first, with their
    recommendation (REVOKE_PENALTY, REINSTATE, ENFORCE, RELABEL, ADJUST_ACTION)."""
    alert = aware(await load_alert(engine, alert_id))
    since = await since_of(engine, alert)
    where = [*_scope_filter(remediations, alert), *_since_onset(remediations, alert, since)]
    where.append(remediations.c.status == "open")
    if alert["rule"] in RULE_ERROR_TYPE:
        where.append(remediations.c.error_type == RULE_ERROR_TYPE[alert["rule"]])
    rows, nxt = await _findings_page(engine, where, limit, cursor)
    return _answer([_row(r, FINDING_COLUMNS) for r in rows], nxt, format, FINDING_COLUMNS, f"findings-{alert_id}")


@router.get("/v1/remediations", response_model=FindingList, responses=CSV)
async def list_remediations(
    engine: EngineDep,
    policy_label: str | None = None,
    vendor_id: str | None = None,
    market: str | None = None,
    status: Literal["open", "retracted"] | None = None,
    recommendation: str | None = None,
    error_type: str | None = None,
    finding: Literal["qa", "appeal"] | None = None,
    decided_from: datetime | None = Query(None, alias="from"),
    decided_to: datetime | None = Query(None, alias="to"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Every finding (quality.remediations as stored), oldest decision first, with filters."""
    c = remediations.c
    equal = {
        "policy_label": policy_label,
        "vendor_id": vendor_id,
        "market": market,
        "status": status,
        "recommendation": recommendation,
        "error_type": error_type,
        "finding": finding,
    }
    where = [c[k] == v for k, v in equal.items() if v is not None]
    if decided_from is not None:
        where.append(c.decided_at >= decided_from)
    if decided_to is not None:
        where.append(c.decided_at < decided_to)
    rows, nxt = await _findings_page(engine, where, limit, cursor)
    return _answer([_row(r, FINDING_COLUMNS) for r in rows], nxt, format, FINDING_COLUMNS, "remediations")


def stratified_sample(
    pool: list[dict[str, Any]], strata: list[tuple[str, str, float]], size: int
) -> list[dict[str, Any]]:
    """``size`` decisions from ``pool``: each attribution slice (dimension, value, share) gets its share
    of the sample, the rest of the pool ("elsewhere") what is left; a stratum short of decisions
    passes its places on. A decision belongs to the first slice it matches. Within a stratum the
    order is a hash of the decision id: a fixed pseudo-random order, the same on every call."""
    groups: dict[str, list[dict[str, Any]]] = {f"{d}={v}": [] for d, v, _ in strata}
    groups["elsewhere"] = []
    for row in sorted(pool, key=lambda r: zlib.crc32(str(r["decision_id"]).encode())):
        name = next((f"{d}={v}" for d, v, _ in strata if str(row.get(d)) == v), "elsewhere")
        groups[name].append({**row, "stratum": name})
    wanted = {f"{d}={v}": round(size * min(max(share, 0.0), 1.0)) for d, v, share in strata}
    wanted["elsewhere"] = max(0, size - sum(wanted.values()))
    out: list[dict[str, Any]] = []
    for name, rows in groups.items():
        out.extend(rows[: wanted[name]])
    if len(out) < size:  # places a short stratum left, to the others in turn
        taken = {r["decision_id"] for r in out}
        rest = [r for rows in groups.values() for r in rows if r["decision_id"] not in taken]
        out.extend(rest[: size - len(out)])
    return out[:size]


@router.get("/v1/alerts/{alert_id}/rereview", response_model=RereviewList, responses=CSV)
async def rereview(
    alert_id: str,
    engine: EngineDep,
    size: int = Query(200, ge=1, le=5000, description="decisions in the whole sample"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """A re-review sample: decisions of the alert's scope since onset that QA has not judged yet (from
    the scorer's hash sample of decisions, ``MODQ_REREVIEW_SAMPLE_RATE``), stratified by the alert's
    attribution: each slice where the excess sits gets its share of the sample. Pages of ``limit``
    over the ``size`` decisions; the same sample on every call while the data stand still."""
    alert = aware(await load_alert(engine, alert_id))
    evidence = await evidence_of(engine, alert)
    c = decision_samples.c
    where = [*_scope_filter(decision_samples, alert), *_since_onset(decision_samples, alert, evidence.since)]
    stmt = select(decision_samples).where(*where, c.judged.is_(False)).limit(MAX_POOL)
    async with engine.connect() as conn:
        pool = [aware(r) for r in (await conn.execute(stmt)).mappings().all()]
    strata = [(str(s["dimension"]), str(s["value"]), float(s["share"])) for s in evidence.attribution]  # type: ignore[arg-type]
    sample = stratified_sample(pool, strata, size)
    try:
        start = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
    except ValueError:
        raise HTTPException(400, "invalid cursor") from None
    page = sample[start : start + limit]
    nxt = base64.urlsafe_b64encode(str(start + limit).encode()).decode() if start + limit < len(sample) else None
    items = [{k: r.get(k) for k in REREVIEW_COLUMNS} for r in page]
    return _answer(items, nxt, format, REREVIEW_COLUMNS, f"rereview-{alert_id}")
