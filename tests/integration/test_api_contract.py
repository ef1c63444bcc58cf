"""The HTTP API under schemathesis, against its own OpenAPI document: no 5xx, no response that
violates the schema. A real API process over PostgreSQL and the broker, with alerts in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.common.auth import create_key
from services.common.db import make_engine
from services.common.history import record_alert_change
from services.common.migrate import ensure_schema
from tests.support.factories import alert_event
from tests.support.pipeline_util import api_ready
from tests.support.processes import Service, eventually, free_port

pytestmark = pytest.mark.integration

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


async def test_api_conforms_to_its_openapi_document(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    for i in range(3):
        await record_alert_change(engine, alert_event(f"a-{i}", "firing", vendor=f"V0{i}"))
    _, key = await create_key(engine, "schemathesis", "operator")
    await engine.dispose()
    port = free_port()
    api = spawn(["api", "--port", str(port)], {**service_env, "MODQ_DATABASE_URL": database_url}, "api")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await eventually(lambda: api_ready(client), 60)

    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is a dev dependency"
    run = subprocess.run(  # noqa: ASYNC221 - the API under test is another process
        [
            cli,
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "50",
            "--seed",
            "7",
            "--header",
            f"Authorization: Bearer {key}",
            "--request-timeout",
            "10",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert api.proc is not None and api.proc.poll() is None
