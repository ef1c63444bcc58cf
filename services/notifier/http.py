"""The notifier's small HTTP surface: /metrics, /healthz, /readyz."""

from __future__ import annotations

from fastapi import FastAPI, Response

from services.common.metrics import metrics_response
from services.notifier.service import Notifier


def create_notifier_app(notifier: Notifier) -> FastAPI:
    app = FastAPI(title="modq notifier", version="1")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        if not notifier.ready.is_set():
            response.status_code = 503
            return {"status": "starting", "lanes": notifier.lanes}
        if not notifier.health.ok:  # a lane's partition waits at a record batch that cannot be read
            response.status_code = 503
            return {"status": "partitions stuck", "lanes": notifier.lanes, "stuck": notifier.health.report()}
        return {"status": "ready", "lanes": notifier.lanes}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, media_type = metrics_response(notifier.registry)
        return Response(body, media_type=media_type)

    return app
