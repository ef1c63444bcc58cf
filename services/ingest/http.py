"""HTTP batch endpoint of ingest: POST /v1/events/{decisions|verdicts|appeals}."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from services.ingest.service import IngestService
from services.ingest.validate import Rejected, validate_record

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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="modq ingest", version="1", lifespan=lifespan)

    @app.post("/v1/events/{kind}", response_model=BatchResult)
    async def post_events(kind: Literal["decisions", "verdicts", "appeals"], request: Request) -> BatchResult:
        """Validate a JSON array of events; valid ones are durably appended, invalid ones reported by index."""
        if not service.ready:
            raise HTTPException(503, "ingest is not connected to Kafka yet")
        body = await request.body()
        if len(body) > s.max_record_bytes * s.ingest_http_max_events:
            raise HTTPException(413, "request body too large")
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise HTTPException(400, "body must be a JSON array of events")
        if len(items) > s.ingest_http_max_events:
            raise HTTPException(413, f"at most {s.ingest_http_max_events} events per request")
        event_kind = KINDS[kind]
        topic = {"decision": s.topic_decisions, "verdict": s.topic_verdicts, "appeal": s.topic_appeals}[event_kind]
        now_ms = int(time.time() * 1000)
        good: list[tuple[bytes, bytes]] = []
        rejected: list[ItemError] = []
        for i, item in enumerate(items):
            raw = orjson.dumps(item)
            result = validate_record(
                event_kind,
                raw,
                now_ms=now_ms,
                max_bytes=s.max_record_bytes,
                max_future_skew_ms=s.max_future_skew_s * 1000,
            )
            if isinstance(result, Rejected):
                rejected.append(ItemError(index=i, reason=result.reason, detail=result.detail))
            else:
                good.append((result.decision_id.encode(), raw))
        if good:
            await service.publish_raw(topic, good)
        return BatchResult(accepted=len(good), rejected=rejected)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, str]:
        if not service.ready:
            response.status_code = 503
            return {"status": "not ready"}
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
