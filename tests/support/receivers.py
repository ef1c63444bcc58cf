"""Local stand-ins for the notifier's receivers, and a real Alertmanager started for a test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from services.notifier.messages import verify
from tests.support.daemons import start_daemon


class Recorder:
    """An HTTP server on 127.0.0.1 that records JSON posts per path; it can answer 503 or be down."""

    def __init__(self, port: int, check: Callable[[str, web.Request, bytes], None] | None = None) -> None:
        self.port, self.check = port, check
        self.posts: dict[str, list[Any]] = {}
        self.failing: Callable[[str, Any], bool] = lambda path, body: False
        self.errors: list[str] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = orjson.loads(raw)
        if self.failing(request.path, body):
            return web.Response(status=503, text="down for maintenance")
        if self.check is not None:
            try:
                self.check(request.path, request, raw)
            except AssertionError as exc:  # a bad payload is a test failure, reported by the test
                self.errors.append(f"{request.path}: {exc}")
                return web.Response(status=400, text=str(exc))
        self.posts.setdefault(request.path, []).append(body)
        return web.Response(status=202 if request.path == "/pd" else 200, text="ok")

    async def start(self) -> Recorder:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def got(self, path: str) -> list[Any]:
        return self.posts.get(path, [])


def check_payloads(secret: str, routing_key: str) -> Callable[[str, web.Request, bytes], None]:
    """What PagerDuty, Slack and a signed-webhook consumer would insist on."""

    def check(path: str, request: web.Request, raw: bytes) -> None:
        body = orjson.loads(raw)
        if path == "/pd":
            assert body["routing_key"] == routing_key, "wrong routing key"
            assert body["event_action"] in ("trigger", "acknowledge", "resolve"), body
            assert body["dedup_key"], "no dedup_key"
            if body["event_action"] == "trigger":
                p = body["payload"]
                assert p["source"] and p["severity"] in ("critical", "error", "warning", "info"), p
                assert 0 < len(p["summary"]) <= 1024 and "verdicts since" in p["summary"], p["summary"]
        elif path == "/slack":
            assert body["text"] and body["blocks"], body
        elif path == "/hook":
            h = request.headers
            assert verify(secret, h["x-modq-timestamp"], raw, h["x-modq-signature"]), "bad signature"
            assert h["x-modq-delivery"] == body["delivery_key"], "delivery header"

    return check


ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

ALERTMANAGER_CONFIG = """
route:
  receiver: hook
  group_by: [alert_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 4h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/am
        send_resolved: true
"""


def start_alertmanager(workdir: Path, port: int, hook_port: int) -> subprocess.Popen[bytes]:
    assert ALERTMANAGER_BIN, "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "am.yml").write_text(ALERTMANAGER_CONFIG.format(hook_port=hook_port))
    argv = [
        ALERTMANAGER_BIN,
        f"--config.file={workdir / 'am.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    return start_daemon(argv, workdir / "am.log", f"http://127.0.0.1:{port}/-/ready")
