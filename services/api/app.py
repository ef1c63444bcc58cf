"""modq api: rates with confidence intervals and alert history, over the database."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlencode

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, field_validator
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import DataError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.actions import AlertAction, encode_action, new_action
from services.common.auth import Principal, Role, authenticate, key_from_headers
from services.common.config import ApiSettings
from services.common.db import DB_UNAVAILABLE, alert_history, alerts, make_engine, rate_buckets, silences
from services.common.history import apply_action
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
    resolved_by: str | None = None
    baseline_rate: float
    observed_rate: float
    ci_low: float
    ci_high: float
    verdicts: int
    errors: int
    summary: str
    historical: bool = Field(False, description="raised while catching up on old history: recorded, not paged")
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


def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("NUL characters are not allowed")
    return v


Text = Annotated[str, AfterValidator(_no_nul)]
HANDLE = Field(
    None, min_length=1, max_length=128, description="who acts (a handle, not an email); default: the key's name"
)
COMMENT = Field(None, max_length=2000)


class AckRequest(BaseModel):
    by: Text | None = HANDLE
    comment: Text | None = COMMENT


class ResolveRequest(BaseModel):
    by: Text | None = HANDLE
    comment: Text | None = COMMENT


class CommentRequest(BaseModel):
    by: Text | None = HANDLE
    comment: Text = Field(..., min_length=1, max_length=2000)


class SilenceRequest(BaseModel):
    until: AwareDatetime = Field(..., description="notifications for the pair are held back until this time")
    by: Text | None = HANDLE
    comment: Text | None = COMMENT

    @field_validator("until")
    @classmethod
    def _in_the_future(cls, v: datetime) -> datetime:
        if v <= datetime.now(tz=UTC):
            raise ValueError("until must be in the future")
        return v


class ErrorBody(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad request (e.g. an invalid cursor)"),
        (401, "no valid API key"),
        (403, "the key's role may not do this"),
        (404, "no such alert"),
        (503, "the database or Kafka is unavailable; retry later"),
    )
}


class HistoryItem(BaseModel):
    event_id: str
    alert_id: str | None
    policy_label: str
    vendor_id: str
    rule: str | None
    action: str
    actor: str
    key_id: str | None
    at: datetime
    until: datetime | None
    comment: str | None
    detail: str
    recorded_at: datetime


class HistoryList(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None = None


class SilenceItem(BaseModel):
    policy_label: str
    vendor_id: str
    until: datetime
    created_by: str
    created_at: datetime
    comment: str | None


EXPORT_COLUMNS = (
    "alert_id",
    "rule",
    "policy_label",
    "vendor_id",
    "error_type",
    "status",
    "started_at",
    "onset_at",
    "resolved_at",
    "acknowledged_at",
    "acknowledged_by",
    "resolved_by",
    "baseline_rate",
    "observed_rate",
    "ci_low",
    "ci_high",
    "verdicts",
    "errors",
    "summary",
    "historical",
)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _aware(row: Any) -> dict[str, Any]:
    """A row as a dict with timestamps made timezone-aware (SQLite returns naive ones)."""
    return {k: _utc(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


def _encode_cursor(started_at: datetime, alert_id: str) -> str:
    return base64.urlsafe_b64encode(f"{started_at.isoformat()}|{alert_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, alert_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), alert_id
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "invalid cursor") from None


class QualityGauges:
    """Error rates with intervals per pair and window, and open alerts, read from the database at scrape time.

    Refreshed at most every ``REFRESH_S`` seconds; pairs beyond the label budget are pooled into
    "other" (their counts summed, then the rate and interval computed from the sums).
    """

    REFRESH_S = 10.0
    WINDOWS = ("1h", "24h")

    def __init__(self, registry: CollectorRegistry, settings: ApiSettings) -> None:
        pair = ["policy_label", "vendor_id", "window"]
        self.rate = Gauge("modq_error_rate_ratio", "Error rate over the window (event time)", pair, registry=registry)
        self.low = Gauge(
            "modq_error_rate_ci_low_ratio", "Lower bound of the Wilson 95% interval", pair, registry=registry
        )
        self.high = Gauge(
            "modq_error_rate_ci_high_ratio", "Upper bound of the Wilson 95% interval", pair, registry=registry
        )
        self.verdicts = Gauge("modq_window_verdicts", "Judged verdicts in the window", pair, registry=registry)
        self.open = Gauge(
            "modq_alerts_open", "Alerts not yet resolved, by rule and status", ["rule", "status"], registry=registry
        )
        self.labels, self.vendors = settings.metric_budgets()
        self.refreshed = -1e9

    async def refresh(self, engine: AsyncEngine) -> None:
        if time.monotonic() - self.refreshed < self.REFRESH_S:
            return
        self.refreshed = time.monotonic()
        now = datetime.now(tz=UTC)
        try:
            async with engine.connect() as conn:
                per_window = {}
                for name in self.WINDOWS:
                    b = rate_buckets.c
                    stmt = (
                        select(b.policy_label, b.vendor_id, *[func.sum(b[f]).label(f) for f in COUNT_FIELDS])
                        .where(b.bucket_start >= now - timedelta(milliseconds=WINDOWS_MS[name]), b.bucket_start < now)
                        .group_by(b.policy_label, b.vendor_id)
                    )
                    per_window[name] = (await conn.execute(stmt)).mappings().all()
                open_alerts = (
                    await conn.execute(
                        select(alerts.c.rule, alerts.c.status, func.count())
                        .where(alerts.c.status != "resolved")
                        .group_by(alerts.c.rule, alerts.c.status)
                    )
                ).all()
        except DB_UNAVAILABLE:
            log.warning("metrics: database unavailable, serving the last values")
            return
        for gauge in (self.rate, self.low, self.high, self.verdicts, self.open):
            gauge.clear()
        for name, rows in per_window.items():
            pooled: dict[tuple[str, str], list[float]] = {}
            for row in rows:
                key = (self.labels.value(row["policy_label"]), self.vendors.value(row["vendor_id"]))
                counts = [float(row[f] or 0) for f in COUNT_FIELDS]
                acc = pooled.setdefault(key, [0.0] * len(COUNT_FIELDS))
                pooled[key] = [a + c for a, c in zip(acc, counts, strict=True)]
            for (label, vendor), counts in pooled.items():
                summary = RateSummary.from_counts(counts)
                self.verdicts.labels(label, vendor, name).set(summary.verdicts)
                if summary.error_rate is not None:
                    self.rate.labels(label, vendor, name).set(summary.error_rate)
                    self.low.labels(label, vendor, name).set(summary.ci_low)
                    self.high.labels(label, vendor, name).set(summary.ci_high)
        for rule, status, n in open_alerts:
            self.open.labels(rule, status).set(n)


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


class Observe:
    """Request metrics and the errors the endpoints leave to it, as a plain ASGI middleware.

    Starlette's ``@app.middleware("http")`` (``BaseHTTPMiddleware``) runs every response through
    a task and a memory stream; it was the largest single cost of a cheap request under load.
    """

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def sending(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        path, query = scope.get("path", ""), scope.get("query_string", b"")
        refusal: tuple[int, str] | None = None
        if "%00" in path or "\x00" in path or b"%00" in query:
            refusal = (400, "NUL characters are not allowed")
        else:
            try:
                await self.app(scope, receive, sending)
            except DataError:  # a value PostgreSQL refuses (found by schemathesis); the request is at fault
                if started:  # a streamed response cannot be replaced any more
                    raise
                log.warning("value refused by the database")
                refusal = (400, "a value in the request cannot be stored or searched for")
            except DB_UNAVAILABLE:
                if started:
                    raise
                log.exception("database unavailable")
                refusal = (503, "database unavailable, retry later")
        if refusal is not None:
            await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, sending)
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - start)


class EncodedSlashes:
    """Path segments that hold a ``/`` (a label such as ``ip.trademark/counterfeit``, sent as
    ``ip.trademark%2Fcounterfeit``) stay one segment.

    Servers hand the application the percent-decoded path, in which an encoded slash can no longer
    be told from a separator. This rebuilds the path from the raw one: each segment decoded, then
    only ``%`` and ``/`` encoded again, so routing sees the segments the client sent and ``label``
    (a dependency of the routes with labels in their path) decodes them exactly.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw and b"%" in raw:
            segments = raw.decode("latin-1").split("/")
            path = "/".join(unquote(s).replace("%", "%25").replace("/", "%2F") for s in segments)
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


def path_label(value: str) -> str:
    """A label from a path segment rebuilt by ``EncodedSlashes``.

    >>> path_label("ip.trademark%2Fcounterfeit"), path_label("100%25"), path_label("SCAMS")
    ('ip.trademark/counterfeit', '100%', 'SCAMS')
    """
    return unquote(value)


def pair_path(policy_label: str, vendor_id: str) -> tuple[str, str]:
    """The (policy_label, vendor_id) of a ``/pairs/{policy_label}/{vendor_id}/...`` path."""
    return path_label(policy_label), path_label(vendor_id)


PairDep = Annotated[tuple[str, str], Depends(pair_path)]


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

    quality = QualityGauges(registry, settings)
    producer: dict[str, AIOKafkaProducer] = {}  # started on first use: the API must run without Kafka

    async def principal(request: Request) -> Principal | None:
        key = key_from_headers(request.headers)
        if not key:
            return None
        who = await authenticate(request.app.state.engine, key)
        if who is None:
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        return who

    def require(role: Role) -> Any:
        async def check(who: Principal | None = Depends(principal)) -> Principal:
            if who is None:
                raise HTTPException(
                    401, f"an API key with role {role} is required", headers={"WWW-Authenticate": "Bearer"}
                )
            if not who.may(role):
                raise HTTPException(403, f"role {who.role} may not do this; needs {role}")
            return who

        return check

    async def reader(who: Principal | None = Depends(principal)) -> None:
        if settings.api_read_requires_key and who is None:
            raise HTTPException(401, "an API key with role viewer is required", headers={"WWW-Authenticate": "Bearer"})

    operator = require("operator")

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
        responses=ERRORS,
    )

    app.add_middleware(Observe, requests=requests, latency=latency)
    app.add_middleware(EncodedSlashes)

    @app.get("/v1/rates", response_model=RateList, dependencies=[Depends(reader)])
    async def get_rates(
        engine: EngineDep,
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
        if as_of is None and settings.api_rates_cache_s > 0:
            key = (policy_label, vendor_id, market, window, by_market)
            entry = rates_cache.get(key)
            if entry is None:
                if len(rates_cache) >= 10_000:
                    rates_cache.clear()
                entry = rates_cache[key] = RatesEntry()
            now = time.monotonic()
            if now >= entry.fresh_until and entry.refreshing is None:
                entry.fresh_until = now + settings.api_rates_cache_s
                entry.refreshing = asyncio.create_task(
                    refresh_rates(
                        entry, compute_rates(engine, policy_label, vendor_id, market, window, by_market, None)
                    )
                )
                entry.refreshing.add_done_callback(_retrieve)
            if entry.answer is not None:
                return entry.answer  # (stale by at most the cache time plus one computation)
            assert entry.refreshing is not None
            return await asyncio.shield(entry.refreshing)  # the first answer: every caller waits for it
        return await compute_rates(engine, policy_label, vendor_id, market, window, by_market, as_of)

    async def refresh_rates(entry: RatesEntry, computation: Coroutine[Any, Any, RateList]) -> RateList:
        try:
            entry.answer = await computation
            return entry.answer
        except BaseException:
            entry.fresh_until, entry.answer = 0.0, None  # nothing stale after a failure: the next request retries
            raise
        finally:
            entry.refreshing = None

    rates_cache: dict[tuple[object, ...], RatesEntry] = {}

    async def compute_rates(
        engine: AsyncEngine,
        policy_label: str | None,
        vendor_id: str | None,
        market: str | None,
        window: Window | None,
        by_market: bool,
        as_of: datetime | None,
    ) -> RateList:
        end = _utc(as_of) or datetime.now(tz=UTC)
        if not 1970 <= end.year <= 9998:  # the windows must fit in a datetime (found by schemathesis)
            raise HTTPException(400, "as_of must be between the years 1970 and 9998")
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

    def _history_item(row: dict[str, object]) -> HistoryItem:
        return HistoryItem.model_validate(_aware(row))

    def _links(row: Any) -> dict[str, str]:
        base = settings.public_api_url.rstrip("/")
        pair = urlencode({"policy_label": row["policy_label"], "vendor_id": row["vendor_id"]})
        return {"self": f"{base}/v1/alerts/{quote(str(row['alert_id']), safe='')}", "rates": f"{base}/v1/rates?{pair}"}

    def _alert_item(row: dict[str, object]) -> AlertItem:
        data = _aware(row)
        data["links"] = _links(row)
        return AlertItem.model_validate(data)

    alert_fields = tuple(f for f in AlertItem.model_fields if f != "links")

    def _alert_json(row: Any) -> dict[str, Any]:
        """An AlertItem for orjson (``OPT_NAIVE_UTC``: its datetimes as RFC 3339, naive ones from
        SQLite as UTC), without a model round trip (the list endpoint's hot path)."""
        out = {f: row[f] for f in alert_fields}
        out["links"] = _links(row)
        return out

    def _alert_query(
        status: AlertStatus | None, policy_label: str | None, vendor_id: str | None, rule: str | None
    ) -> Any:
        stmt = select(alerts).order_by(alerts.c.started_at.desc(), alerts.c.alert_id.desc())
        filters = (("status", status), ("policy_label", policy_label), ("vendor_id", vendor_id), ("rule", rule))
        for col, value in filters:
            if value is not None:
                stmt = stmt.where(alerts.c[col] == value)
        return stmt

    def _after(stmt: Any, cursor: str | None) -> Any:
        if not cursor:
            return stmt
        ts, alert_id = _decode_cursor(cursor)
        return stmt.where(or_(alerts.c.started_at < ts, and_(alerts.c.started_at == ts, alerts.c.alert_id < alert_id)))

    @app.get("/v1/alerts", response_model=AlertList, dependencies=[Depends(reader)])
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
        stmt = _after(_alert_query(status, policy_label, vendor_id, rule), cursor).limit(limit + 1)
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(last["started_at"], last["alert_id"])
        body = orjson.dumps(
            {"items": [_alert_json(r) for r in rows[:limit]], "next_cursor": next_cursor}, option=orjson.OPT_NAIVE_UTC
        )
        return Response(body, media_type="application/json")  # type: ignore[return-value]

    @app.get(
        "/v1/alerts/export.csv",
        dependencies=[Depends(reader)],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def export_alerts(
        engine: EngineDep,
        status: AlertStatus | None = None,
        policy_label: str | None = None,
        vendor_id: str | None = None,
        rule: str | None = None,
    ) -> StreamingResponse:
        """Every matching alert as CSV, newest first (streamed page by page)."""
        base = _alert_query(status, policy_label, vendor_id, rule)

        async def rows() -> AsyncIterator[str]:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(EXPORT_COLUMNS)
            cursor: str | None = None
            while True:
                async with engine.connect() as conn:
                    page = (await conn.execute(_after(base, cursor).limit(1000))).mappings().all()
                for r in map(_aware, page):
                    writer.writerow([r[c].isoformat() if isinstance(r[c], datetime) else r[c] for c in EXPORT_COLUMNS])
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
                if len(page) < 1000:
                    return
                cursor = _encode_cursor(page[-1]["started_at"], page[-1]["alert_id"])

        return StreamingResponse(
            rows(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="alerts.csv"'}
        )

    async def _load_alert(engine: AsyncEngine, alert_id: str) -> dict[str, object]:
        async with engine.connect() as conn:
            row = (await conn.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return dict(row)

    @app.get("/v1/alerts/{alert_id}", response_model=AlertItem, dependencies=[Depends(reader)])
    async def get_alert(alert_id: str, engine: EngineDep) -> AlertItem:
        return _alert_item(await _load_alert(engine, alert_id))

    async def _publish(action: AlertAction) -> None:
        """Put the action on the actions topic (the log) before the database (the view) changes."""
        try:
            if "p" not in producer:
                p = make_producer(settings)
                await p.start()
                producer["p"] = p
            key = action.alert_id.encode() if action.alert_id else pair_key(action.policy_label, action.vendor_id)
            await (await producer["p"].send(settings.topic_alert_actions, encode_action(action), key=key))
        except KafkaError:
            log.warning("could not publish alert action", extra={"action_id": action.action_id})
            raise HTTPException(503, "Kafka unavailable, retry later") from None

    async def _act_on_alert(
        engine: AsyncEngine, alert_id: str, kind: str, who: Principal, by: str | None, comment: str | None
    ) -> AlertItem:
        row = await _load_alert(engine, alert_id)
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
        await _publish(action)
        await apply_action(engine, action)
        return _alert_item(await _load_alert(engine, alert_id))

    @app.post("/v1/alerts/{alert_id}/ack", response_model=AlertItem)
    async def acknowledge(
        alert_id: str, engine: EngineDep, body: AckRequest | None = None, who: Principal = Depends(operator)
    ) -> AlertItem:
        """Acknowledge a firing alert (idempotent; a resolved alert stays resolved)."""
        body = body or AckRequest()
        return await _act_on_alert(engine, alert_id, "acknowledged", who, body.by, body.comment)

    @app.post("/v1/alerts/{alert_id}/resolve", response_model=AlertItem)
    async def resolve(
        alert_id: str, engine: EngineDep, body: ResolveRequest | None = None, who: Principal = Depends(operator)
    ) -> AlertItem:
        """Resolve an alert by hand; receivers are told, the detector keeps watching the pair."""
        body = body or ResolveRequest()
        return await _act_on_alert(engine, alert_id, "resolved", who, body.by, body.comment)

    @app.post("/v1/alerts/{alert_id}/comments", response_model=AlertItem)
    async def comment(
        alert_id: str, body: CommentRequest, engine: EngineDep, who: Principal = Depends(operator)
    ) -> AlertItem:
        """Add a comment to an alert's history."""
        return await _act_on_alert(engine, alert_id, "commented", who, body.by, body.comment)

    @app.get("/v1/alerts/{alert_id}/history", response_model=HistoryList, dependencies=[Depends(reader)])
    async def alert_history_of(alert_id: str, engine: EngineDep) -> HistoryList:
        """Every state change and comment of one alert, oldest first."""
        await _load_alert(engine, alert_id)
        stmt = select(alert_history).where(alert_history.c.alert_id == alert_id)
        async with engine.connect() as conn:
            order = (alert_history.c.recorded_at, alert_history.c.event_id)
            rows = (await conn.execute(stmt.order_by(*order))).mappings()
            return HistoryList(items=[_history_item(dict(r)) for r in rows])

    @app.get("/v1/history", response_model=HistoryList, dependencies=[Depends(reader)])
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
        h = alert_history.c
        stmt = select(alert_history).order_by(h.recorded_at.desc(), h.event_id.desc()).limit(limit + 1)
        for col, value in (("policy_label", policy_label), ("vendor_id", vendor_id), ("action", action)):
            if value is not None:
                stmt = stmt.where(h[col] == value)
        if cursor:
            ts, event_id = _decode_cursor(cursor)
            stmt = stmt.where(or_(h.recorded_at < ts, and_(h.recorded_at == ts, h.event_id < event_id)))
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor(rows[limit - 1]["recorded_at"], rows[limit - 1]["event_id"])
        return HistoryList(items=[_history_item(dict(r)) for r in rows[:limit]], next_cursor=next_cursor)

    @app.post("/v1/pairs/{policy_label}/{vendor_id}/silence", response_model=SilenceItem)
    async def silence(
        pair: PairDep, body: SilenceRequest, engine: EngineDep, who: Principal = Depends(operator)
    ) -> SilenceItem:
        """Hold back notifications for a pair until a time (detection and history go on).

        A label with a ``/`` in it goes percent-encoded (``ip.trademark%2Fcounterfeit``)."""
        policy_label, vendor_id = pair
        until = body.until.astimezone(UTC)
        action = new_action(
            action="silenced",
            policy_label=policy_label,
            vendor_id=vendor_id,
            actor=body.by or who.name,
            key_id=who.key_id,
            until=until.isoformat().replace("+00:00", "Z"),
            comment=body.comment,
        )
        await _publish(action)
        await apply_action(engine, action)
        async with engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(silences).where(
                            silences.c.policy_label == policy_label, silences.c.vendor_id == vendor_id
                        )
                    )
                )
                .mappings()
                .one()
            )
        return SilenceItem.model_validate(_aware(row))

    @app.get("/v1/silences", response_model=list[SilenceItem], dependencies=[Depends(reader)])
    async def list_silences(engine: EngineDep) -> list[SilenceItem]:
        """Silences still in force."""
        stmt = select(silences).where(silences.c.until > datetime.now(tz=UTC)).order_by(silences.c.until)
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [SilenceItem.model_validate(_aware(r)) for r in rows]

    @app.post("/v1/pairs/{policy_label}/{vendor_id}/rebaseline", response_model=Accepted, status_code=202)
    async def rebaseline(
        pair: PairDep,
        body: RebaselineRequest,
        engine: EngineDep,
        who: Principal = Depends(operator),
    ) -> Accepted:
        """Re-baseline a pair's monitors: set the rate, or learn it again from now on.

        The request travels to the scorer on the pair's own partition, after the verdicts already queued.
        """
        policy_label, vendor_id = pair
        what = f"baseline {body.rate:.2%}" if body.rate is not None else "learning the baseline again"
        action = new_action(
            action="rebaselined",
            policy_label=policy_label,
            vendor_id=vendor_id,
            rule=body.rule,
            actor=who.name,
            key_id=who.key_id,
            detail=f"{body.rule or 'all rules'}: {what}",
        )
        await _publish(action)
        request = Rebaseline(rule=body.rule, rate=body.rate, t_ms=int(time.time() * 1000))
        try:
            await (
                await producer["p"].send(
                    settings.topic_outcomes, encode_rebaseline(request), key=pair_key(policy_label, vendor_id)
                )
            )
        except KafkaError:
            raise HTTPException(503, "Kafka unavailable, retry later") from None
        await apply_action(engine, action)
        return Accepted(detail=f"{policy_label} / {vendor_id} ({body.rule or 'all rules'}): {what}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(engine: EngineDep, response: Response) -> dict[str, str]:
        try:
            async with engine.connect() as conn:
                await conn.execute(select(1))
        except DB_UNAVAILABLE:
            response.status_code = 503
            return {"status": "database unavailable"}
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(engine: EngineDep) -> Response:
        await quality.refresh(engine)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
