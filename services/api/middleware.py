"""ASGI middleware: request metrics and errors left to it, and labels with slashes in paths."""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote

from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import DataError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.db import DB_UNAVAILABLE

log = logging.getLogger("modq.api")


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
