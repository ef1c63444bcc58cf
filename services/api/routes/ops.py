"""Liveness, readiness and ``/metrics``: for the platform, not for people."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from services.api.deps import EngineDep
from services.common.db import DB_UNAVAILABLE
from services.common.metrics import metrics_response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(engine: EngineDep, response: Response) -> dict[str, str]:
    try:
        async with engine.connect() as conn:
            await conn.execute(select(1))
    except DB_UNAVAILABLE:
        response.status_code = 503
        return {"status": "database unavailable"}
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics(engine: EngineDep, request: Request) -> Response:
    await request.app.state.quality.refresh(engine)
    body, media_type = metrics_response(request.app.state.registry)
    return Response(body, media_type=media_type)
