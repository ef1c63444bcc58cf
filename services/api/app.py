"""modq api: rates with confidence intervals and alert history, over the database."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.config import ApiSettings
from services.common.db import alerts, make_engine, rate_buckets
from services.common.kafka import make_producer
from services.common.migrate import ensure_schema
from services.scorer.pipeline import Rebaseline, encode_rebaseline, pair_key
from services.scorer.rates import COUNT_FIELDS, WINDOWS_MS, RateSummary

log = logging.getLogger("modq.api")

Window = Literal["1h", "24h", "7d"]
AlertStatus = Literal["firing", "acknowledged", "resolved"]


class RateItem(BaseModel):
    policy_label: str
    vendor_id: str
    market: str | None = Field(None, description="set when the rates are split or filtered by market")
    window: Window
    window_start: datetime
    window_end: datetime
    verdicts: int
    errors: int
    error_rate: float | None
    ci_low: float
    ci_high: float
    by_error_type: dict[str, int]
    unable_to_judge: int
    decisions: int
    appeals: int
    overturned: int
    weighted_error_rate: float | None


class RateList(BaseModel):
    items: list[RateItem]


class AlertItem(BaseModel):
    alert_id: str
    dedup_key: str
    rule: str
    policy_label: str
    vendor_id: str
    error_type: str
    status: AlertStatus
    started_at: datetime
    onset_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    baseline_rate: float
    observed_rate: float
    ci_low: float
    ci_high: float
    verdicts: int
    errors: int
    summary: str
    links: dict[str, str]


class AlertList(BaseModel):
    items: list[AlertItem]
    next_cursor: str | None = None


class RebaselineRequest(BaseModel):
    rule: Literal["error_rate", "over_enforcement", "under_enforcement"] | None = Field(
        None, description="one rule, or every rule of the pair when omitted"
    )
    rate: float | None = Field(None, gt=0, lt=1, description="the new baseline; learned again from now when omitted")


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str


class AckRequest(BaseModel):
    by: str = Field(..., min_length=1, max_length=128, description="who acknowledges (a handle, not an email)")


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _encode_cursor(started_at: datetime, alert_id: str) -> str:
    return base64.urlsafe_b64encode(f"{started_at.isoformat()}|{alert_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, alert_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), alert_id
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "invalid cursor") from None


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


def create_api(settings: ApiSettings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or CollectorRegistry()
    requests = Counter("modq_api_requests", "API requests", ["route", "code"], registry=registry)
    latency = Histogram(
        "modq_api_request_duration_seconds",
        "API request latency",
        ["route"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=registry,
    )

    producer: dict[str, AIOKafkaProducer] = {}  # started on first use: the API must run without Kafka

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        await ensure_schema(engine, auto_migrate=settings.auto_migrate)
        app.state.engine = engine
        yield
        await engine.dispose()
        if "p" in producer:
            await producer["p"].stop()

    app = FastAPI(
        title="modq",
        version="1",
        description="Moderation quality: error rates with confidence intervals, drift alerts.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        route = request.scope.get("route")
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except (OperationalError, DBAPIError, OSError):
            log.exception("database unavailable")
            response = JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)
        path = getattr(request.scope.get("route"), "path", None) or getattr(route, "path", "unmatched")
        requests.labels(path, str(response.status_code)).inc()
        latency.labels(path).observe(time.perf_counter() - start)
        return response

    @app.get("/v1/rates", response_model=RateList)
    async def get_rates(
        engine: EngineDep,
        policy_label: str | None = None,
        vendor_id: str | None = None,
        market: str | None = None,
        window: Window | None = Query(None, description="1h, 24h or 7d; all three when omitted"),
        by_market: bool = Query(False, description="split each (policy_label, vendor_id) by market"),
        as_of: datetime | None = Query(None, description="end of the windows (event time); default now"),
    ) -> RateList:
        """Error rates per (policy_label, vendor_id) over event-time windows, with Wilson 95% intervals."""
        end = _utc(as_of) or datetime.now(tz=UTC)
        split = by_market or market is not None
        items: list[RateItem] = []
        for name in [window] if window else list(WINDOWS_MS):
            start = end - timedelta(milliseconds=WINDOWS_MS[name])
            group = [rate_buckets.c.policy_label, rate_buckets.c.vendor_id]
            if split:
                group.append(rate_buckets.c.market)
            stmt = (
                select(*group, *[func.sum(rate_buckets.c[f]).label(f) for f in COUNT_FIELDS])
                .where(rate_buckets.c.bucket_start >= start, rate_buckets.c.bucket_start < end)
                .group_by(*group)
                .order_by(*group)
            )
            for col, value in (("policy_label", policy_label), ("vendor_id", vendor_id), ("market", market)):
                if value is not None:
                    stmt = stmt.where(rate_buckets.c[col] == value)
            async with engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
            for row in rows:
                summary = RateSummary.from_counts([float(row[f] or 0) for f in COUNT_FIELDS])
                items.append(
                    RateItem(
                        policy_label=row["policy_label"],
                        vendor_id=row["vendor_id"],
                        market=row["market"] if split else None,
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
                    )
                )
        return RateList(items=items)

    def _alert_item(row: dict[str, object]) -> AlertItem:
        data = {k: _utc(v) if isinstance(v, datetime) else v for k, v in row.items()}
        base = settings.public_api_url.rstrip("/")
        data["links"] = {
            "self": f"{base}/v1/alerts/{row['alert_id']}",
            "rates": f"{base}/v1/rates?policy_label={row['policy_label']}&vendor_id={row['vendor_id']}",
        }
        return AlertItem.model_validate(data)

    @app.get("/v1/alerts", response_model=AlertList)
    async def list_alerts(
        engine: EngineDep,
        status: AlertStatus | None = None,
        policy_label: str | None = None,
        vendor_id: str | None = None,
        rule: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> AlertList:
        """Alert history, newest first, keyset-paginated."""
        stmt = select(alerts).order_by(alerts.c.started_at.desc(), alerts.c.alert_id.desc()).limit(limit + 1)
        filters = (("status", status), ("policy_label", policy_label), ("vendor_id", vendor_id), ("rule", rule))
        for col, value in filters:
            if value is not None:
                stmt = stmt.where(alerts.c[col] == value)
        if cursor:
            ts, alert_id = _decode_cursor(cursor)
            stmt = stmt.where(
                or_(alerts.c.started_at < ts, and_(alerts.c.started_at == ts, alerts.c.alert_id < alert_id))
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        items = [_alert_item(dict(r)) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(last["started_at"], last["alert_id"])
        return AlertList(items=items, next_cursor=next_cursor)

    @app.get("/v1/alerts/{alert_id}", response_model=AlertItem)
    async def get_alert(alert_id: str, engine: EngineDep) -> AlertItem:
        async with engine.connect() as conn:
            row = (await conn.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return _alert_item(dict(row))

    @app.post("/v1/alerts/{alert_id}/ack", response_model=AlertItem)
    async def acknowledge(alert_id: str, body: AckRequest, engine: EngineDep) -> AlertItem:
        """Acknowledge a firing alert (idempotent; a resolved alert stays resolved)."""
        async with engine.begin() as conn:
            await conn.execute(
                update(alerts)
                .where(alerts.c.alert_id == alert_id, alerts.c.status == "firing")
                .values(status="acknowledged", acknowledged_at=datetime.now(tz=UTC), acknowledged_by=body.by)
            )
            row = (await conn.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return _alert_item(dict(row))

    @app.post("/v1/pairs/{policy_label}/{vendor_id}/rebaseline", response_model=Accepted, status_code=202)
    async def rebaseline(policy_label: str, vendor_id: str, body: RebaselineRequest) -> Accepted:
        """Re-baseline a pair's monitors: set the rate, or learn it again from now on.

        The request travels to the scorer on the pair's own partition, after the verdicts already queued.
        """
        if "p" not in producer:
            p = make_producer(settings)
            try:
                await p.start()
            except KafkaError:
                raise HTTPException(503, "Kafka unavailable, retry later") from None
            producer["p"] = p
        request = Rebaseline(rule=body.rule, rate=body.rate, t_ms=int(time.time() * 1000))
        await (
            await producer["p"].send(
                settings.topic_outcomes, encode_rebaseline(request), key=pair_key(policy_label, vendor_id)
            )
        )
        what = f"baseline {body.rate:.2%}" if body.rate is not None else "learning the baseline again"
        return Accepted(detail=f"{policy_label} / {vendor_id} ({body.rule or 'all rules'}): {what}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(engine: EngineDep, response: Response) -> dict[str, str]:
        try:
            async with engine.connect() as conn:
                await conn.execute(select(1))
        except (OperationalError, DBAPIError, OSError):
            response.status_code = 503
            return {"status": "database unavailable"}
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
