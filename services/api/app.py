"""modq api: rates with confidence intervals and alert history, over the database.

The factory wires the app: the engine and the action publisher for its lifetime, the request
metrics and the quality gauges, the middleware, and one router per resource (``routes/``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.api.deps import Publisher
from services.api.middleware import EncodedSlashes, Observe
from services.api.quality import QualityGauges
from services.api.routes import alerts, findings, history, ops, pairs, rates, reports, reviews, silences
from services.api.routes.rates import RatesCache
from services.api.schemas import ERRORS
from services.api.ui import pages
from services.api.ui.pages import OverviewCache
from services.api.ui.session import Sessions
from services.common.config import ApiSettings
from services.common.db import make_engine
from services.common.migrate import ensure_schema


def create_api(settings: ApiSettings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        await ensure_schema(engine, auto_migrate=settings.auto_migrate)
        app.state.engine = engine
        yield
        await engine.dispose()
        await app.state.publisher.stop()

    app = FastAPI(
        title="modq",
        version="1",
        description="Moderation quality: error rates with confidence intervals, drift alerts.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.quality = QualityGauges(registry, settings)
    app.state.publisher = Publisher(settings)
    app.state.rates_cache = RatesCache(settings.api_rates_cache_s)

    requests = Counter("modq_api_requests", "API requests", ["route", "code"], registry=registry)
    latency = Histogram(
        "modq_api_request_duration_seconds",
        "API request latency",
        ["route"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=registry,
    )
    app.add_middleware(Observe, requests=requests, latency=latency)
    app.add_middleware(EncodedSlashes)
    for module in (rates, findings, alerts, history, pairs, silences, reviews, reports, ops):
        app.include_router(module.router)
    app.state.sessions = Sessions(settings.ui_session_secret)
    app.state.overview = OverviewCache()
    app.include_router(pages.router)
    app.mount("/ui/static", StaticFiles(directory=str(pages.HERE / "static")), name="static")
    return app
