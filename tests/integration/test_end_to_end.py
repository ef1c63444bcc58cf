"""The whole pipeline on real parts: broker, PostgreSQL, ingest, Faust scorer and API as processes.

A drifting (policy_label, vendor_id) pair alerts and resolves, a stable pair stays quiet, and the
rates in the API equal the ground truth despite redelivery, verdicts that precede their decisions,
and bad records interleaved with good ones.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest

from tests.conftest import Service, eventually, free_port
from tests.kafkautil import consume_all, produce
from tests.pipeline_util import DRIFT, STABLE, Traffic, alerts, api_ready, matches

pytestmark = pytest.mark.integration


async def test_pipeline_counts_exactly_alerts_on_drift_and_resolves(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    api_port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_PUBLIC_API_URL": f"http://127.0.0.1:{api_port}"}
    scorer = spawn(["scorer"], env, "scorer")
    spawn(["ingest", "--port", str(free_port())], env, "ingest")
    api = spawn(["api", "--port", str(api_port)], env, "api")
    traffic = Traffic(env)
    bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)

        # Phase 1: both pairs at baseline (about 3%).
        await produce(bootstrap, traffic.phase(DRIFT, 700, 33, 0) + traffic.phase(STABLE, 700, 33, 0))
        await eventually(lambda: matches(client, traffic), 120)
        assert await alerts(client) == []

        # Phase 2: the drifting pair jumps to 20% errors.
        await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 3600) + traffic.phase(STABLE, 400, 33, 3600))
        firing = await eventually(lambda: alerts(client, status="firing", rule="error_rate"), 90)
        assert len(firing) == 1
        alert = firing[0]
        assert (alert["policy_label"], alert["vendor_id"], alert["error_type"]) == (*DRIFT[:2], "ANY")
        assert alert["observed_rate"] > alert["baseline_rate"] == 0.03
        assert alert["verdicts"] > 0 and alert["ci_low"] <= alert["observed_rate"] <= alert["ci_high"]
        # The per-type rules watch the same pair; nothing fires for the stable pair.
        assert {(a["policy_label"], a["vendor_id"]) for a in await alerts(client)} == {DRIFT[:2]}

        ack = await client.post(f"/v1/alerts/{alert['alert_id']}/ack", json={"by": "oncall-pm"})
        assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"

        # Phase 3: the pair recovers; the alert resolves by the downward test.
        await produce(bootstrap, traffic.phase(DRIFT, 1200, 0, 7200))
        resolved = await eventually(lambda: alerts(client, status="resolved", rule="error_rate"), 90)
        assert [a["alert_id"] for a in resolved] == [alert["alert_id"]]
        await eventually(lambda: matches(client, traffic), 60)
        assert len(await alerts(client, rule="error_rate")) == 1  # deduplicated: one alert for the episode

        # Phase 4: an operator declares 25% the new normal; the same 20% no longer pages.
        resp = await client.post(
            f"/v1/pairs/{DRIFT[0]}/{DRIFT[1]}/rebaseline", json={"rule": "error_rate", "rate": 0.25}
        )
        assert resp.status_code == 202, resp.text
        await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 10_800))
        await eventually(lambda: matches(client, traffic), 60)
        assert len(await alerts(client, rule="error_rate")) == 1

    published = await consume_all(bootstrap, env["MODQ_TOPIC_ALERTS"], 2)
    mine = [orjson.loads(r.value) for r in published if orjson.loads(r.value)["rule"] == "error_rate"]
    statuses = [m["status"] for m in mine]
    assert statuses == ["firing", "resolved"]
    assert {m["alert_id"] for m in mine} == {alert["alert_id"]}
    dead = await consume_all(bootstrap, env["MODQ_TOPIC_DEADLETTER"], 1)
    assert dead and {dict(r.headers)["modq.reason"] for r in dead} == {b"schema"}
    assert scorer.proc is not None and scorer.proc.poll() is None, scorer.output()[-3000:]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['MODQ_SCORER_WEB_PORT']}") as web:
        assert (await web.get("/readyz")).status_code == 200
        metrics = await web.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert 'modq_scorer_alert_changes_total{status="firing"}' in metrics.text
    assert api.proc is not None and api.proc.poll() is None
