"""PostgreSQL down for 30 s under a running pipeline: scoring goes on, alerts keep flowing to
Kafka, the API answers 503 with a clear body meanwhile and recovers by itself, and the history
is complete once the database is back."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.kafkautil import consume_all, produce
from tests.support.pipeline_util import DRIFT, STABLE, Traffic, alerts, api_ready, matches
from tests.support.processes import Service, eventually, free_port

pytestmark = pytest.mark.integration


def pg_cluster(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            "main",
            action,
            *(["-m", "fast"] if action == "stop" else []),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    if action == "start":
        for _ in range(60):
            if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0:
                return
            time.sleep(0.5)


@pytest.fixture
def postgres_outage() -> Iterator[Callable[[str], None]]:
    """Stop and start the local PostgreSQL; it is always running again after the test."""
    yield pg_cluster
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode != 0:
        pg_cluster("start")


async def test_postgres_down_for_30_seconds(
    service_env: dict[str, str],
    database_url: str,
    spawn: Callable[..., Service],
    postgres_outage: Callable[[str], None],
) -> None:
    api_port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url}
    scorer = spawn(["scorer"], env, "scorer")
    spawn(["notifier", "--port", str(free_port())], env, "notifier")  # it writes the alert history
    spawn(["ingest", "--port", str(free_port())], env, "ingest")
    api = spawn(["api", "--port", str(api_port)], env, "api")
    traffic = Traffic(env)
    bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
    scorer_web = f"http://127.0.0.1:{env['MODQ_SCORER_WEB_PORT']}"

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)
        await produce(bootstrap, traffic.phase(DRIFT, 600, 33, 0) + traffic.phase(STABLE, 600, 33, 0))
        await eventually(lambda: matches(client, traffic), 120)

        postgres_outage("stop")
        stopped = time.monotonic()
        try:
            # The drift happens while the database is down.
            await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 3600) + traffic.phase(STABLE, 400, 33, 3600))
            down = await client.get("/v1/alerts")
            assert down.status_code == 503 and "database unavailable" in down.json()["detail"]
            assert (await client.get("/readyz")).status_code == 503

            async def alert_published() -> list[dict[str, object]]:
                recs = await consume_all(bootstrap, env["MODQ_TOPIC_ALERTS"], 1, timeout=3)
                return [orjson.loads(r.value) for r in recs if orjson.loads(r.value)["rule"] == "error_rate"]

            fired = await eventually(alert_published, 25, interval=1)  # scoring and alerting go on
            async with httpx.AsyncClient() as web:
                assert (await web.get(f"{scorer_web}/healthz")).status_code == 200
            await asyncio.sleep(max(0.0, 30 - (time.monotonic() - stopped)))  # the rest of the 30 s
        finally:
            postgres_outage("start")

        # Same API process, no restart: ready again, counts exact, the alert and its history there.
        await eventually(lambda: api_ready(client), 60)
        await eventually(lambda: matches(client, traffic), 120)
        firing = await eventually(lambda: alerts(client, rule="error_rate"), 60)
        assert [a["alert_id"] for a in firing] == [fired[0]["alert_id"]]
        history = (await client.get(f"/v1/alerts/{fired[0]['alert_id']}/history")).json()["items"]
        assert [h["action"] for h in history if h["action"] != "evidence"] == ["fired"]
    assert scorer.proc is not None and scorer.proc.poll() is None
    assert api.proc is not None and api.proc.poll() is None
