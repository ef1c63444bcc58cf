"""HTTP batch endpoint of ingest: POST /v1/events/{decisions|verdicts|appeals}."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import orjson
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from services.common.auth import KeyCache, Principal, key_from_headers
from services.common.db import DB_UNAVAILABLE, make_engine
from services.common.metrics import metrics_response
from services.common.ratelimit import RateLimits
from services.contracts.events import Appeal, Decision, Verdict
from services.ingest.service import IngestService
from services.ingest.validate import Rejected, validate_timed

ANONYMOUS = Principal(key_id="anonymous", name="anonymous", role="publisher")
KINDS = {"decisions": "decision", "verdicts": "verdict", "appeals": "appeal"}


class ItemError(BaseModel):
    index: int
    reason: str
    detail: str


class BatchResult(BaseModel):
    accepted: int
    rejected: list[ItemError]


def create_ingest_app(service: IngestService) -> FastAPI:
    s = service.settings

    keys: dict[str, KeyCache] = {}  # made on first use: ingest's Kafka side runs without a database

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if "cache" in keys:
            await keys["cache"].engine.dispose()

    app = FastAPI(title="modq ingest", version="1", lifespan=lifespan)

    limits = RateLimits(s.ingest_rate_limit_rps, s.ingest_rate_limit_burst)

    async def publisher(request: Request) -> Principal:
        if not s.ingest_require_key:
            return ANONYMOUS
        key = key_from_headers(request.headers)
        if not key:
            raise HTTPException(
                401, "an API key with role publisher is required", headers={"WWW-Authenticate": "Bearer"}
            )
        if "cache" not in keys:
            keys["cache"] = KeyCache(make_engine(s.database_url))
        try:
            who = await keys["cache"].authenticate(key, time.monotonic())
        except DB_UNAVAILABLE:
            raise HTTPException(503, "cannot check API keys right now, retry later") from None
        if who is None:
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        if not who.may("publisher"):
            raise HTTPException(403, f"role {who.role} may not publish events; needs publisher")
        return who

    async def read_body(request: Request) -> bytes:
        cap = s.ingest_http_max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise HTTPException(413, f"request body is larger than {cap} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise HTTPException(413, f"request body is larger than {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/events/{kind}", response_model=BatchResult)
    async def post_events(
        kind: Literal["decisions", "verdicts", "appeals"], request: Request, who: Principal = Depends(publisher)
    ) -> BatchResult:
        """Validate a JSON array of events; valid ones are durably appended, invalid ones reported by index."""
        now = time.monotonic()
        if not limits.allow(who.key_id, now):
            wait = max(1, math.ceil(limits.retry_after(who.key_id, now)))
            raise HTTPException(429, "rate limit exceeded for this API key", headers={"Retry-After": str(wait)})
        if not service.serving:
            raise HTTPException(503, "ingest cannot reach Kafka right now; retry later")
        body = await read_body(request)
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise HTTPException(400, "body must be a JSON array of events")
        if len(items) > s.ingest_http_max_events:
            raise HTTPException(413, f"at most {s.ingest_http_max_events} events per request")
        event_kind = KINDS[kind]
        now_ms = int(time.time() * 1000)
        good: list[tuple[Decision | Verdict | Appeal, int]] = []
        rejected: list[ItemError] = []
        for i, item in enumerate(items):
            try:
                raw = orjson.dumps(item)
            except (orjson.JSONEncodeError, TypeError):  # nested deeper than orjson writes (found by fuzzing)
                rejected.append(ItemError(index=i, reason="invalid_json", detail="JSON nested too deeply"))
                continue
            timed = validate_timed(
                event_kind,
                raw,
                now_ms=now_ms,
                max_bytes=s.max_record_bytes,
                max_future_skew_ms=s.max_future_skew_s * 1000,
            )
            if not isinstance(timed, Rejected) and (late := service.router.watermarks.check(event_kind, timed[1])):
                timed = late
            if isinstance(timed, Rejected):
                rejected.append(ItemError(index=i, reason=timed.reason, detail=timed.detail))
            else:
                good.append(timed)
        if good:
            try:
                await service.publish_events(event_kind, good)
            except KafkaError:
                raise HTTPException(503, "ingest cannot reach Kafka right now; retry later") from None
        return BatchResult(accepted=len(good), rejected=rejected)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Not ready while Kafka is unreachable, or while a partition waits at a record batch that
        cannot be read (``stuck``: its topic, partition, offset and the cause)."""
        if not service.serving:
            response.status_code = 503
            return {"status": "not ready", "stuck": service.health.report()}
        if not service.health.ok:
            response.status_code = 503
            return {"status": "partitions stuck", "stuck": service.health.report()}
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, media_type = metrics_response(service.metrics.registry)
        return Response(body, media_type=media_type)

    return app
