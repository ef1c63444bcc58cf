"""The whole pipeline on real parts: broker, PostgreSQL, ingest, Faust scorer and API as processes.

A drifting (policy_label, vendor_id) pair alerts and resolves, a stable pair stays quiet, and the
rates in the API equal the ground truth despite redelivery, verdicts that precede their decisions,
and bad records interleaved with good ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.support.kafkautil import consume_all, produce
from tests.support.observability import panel_queries, promtool
from tests.support.pipeline_util import DRIFT, STABLE, Traffic, alerts, api_ready, make_key, matches
from tests.support.processes import Service, eventually, free_port
from tests.support.receivers import Recorder

pytestmark = pytest.mark.integration


async def test_pipeline_counts_exactly_alerts_on_drift_and_resolves(
    service_env: dict[str, str],
    database_url: str,
    spawn: Callable[..., Service],
    alertmanager: Callable[..., Any],
    prometheus: Callable[..., Any],
) -> None:
    api_port, am_port, hook_port, ingest_port = free_port(), free_port(), free_port(), free_port()
    env = {
        **service_env,
        "MODQ_DATABASE_URL": database_url,
        "MODQ_PUBLIC_API_URL": f"http://127.0.0.1:{api_port}",
        "MODQ_ALERTMANAGER_URL": f"http://127.0.0.1:{am_port}",
        "MODQ_NOTIFIER_PORT": str(free_port()),
    }
    hook = await Recorder(hook_port).start()
    alertmanager(am_port, hook_port)
    scorer = spawn(["scorer"], env, "scorer")
    spawn(["ingest", "--port", str(ingest_port)], env, "ingest")
    api = spawn(["api", "--port", str(api_port)], env, "api")
    notifier = spawn(["notifier"], env, "notifier")
    traffic = Traffic(env)
    bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)
        operator = {"Authorization": f"Bearer {make_key(env, 'oncall-pm', 'operator')}"}
        viewer = {"X-API-Key": make_key(env, "dashboard", "viewer")}

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

        # The scorer's alert reaches Alertmanager through the notifier, and Alertmanager's webhook.
        async def paged() -> list[dict[str, Any]]:
            firing = [p["alerts"][0] for p in hook.got("/am") if p["status"] == "firing"]
            return [a for a in firing if a["labels"]["alert_id"] == alert["alert_id"]]

        page = (await eventually(paged, 60))[0]
        assert page["labels"]["rule"] == "error_rate" and "verdicts since" in page["annotations"]["summary"]

        ack_path = f"/v1/alerts/{alert['alert_id']}/ack"
        assert (await client.post(ack_path)).status_code == 401  # anonymous
        assert (await client.post(ack_path, headers={"Authorization": "Bearer modq_kx_nope"})).status_code == 401
        assert (await client.post(ack_path, headers=viewer)).status_code == 403
        ack = await client.post(ack_path, json={"comment": "looking at vendor training"}, headers=operator)
        assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"
        assert ack.json()["acknowledged_by"] == "oncall-pm"

        # Phase 3: the pair recovers; the alert resolves by the downward test.
        await produce(bootstrap, traffic.phase(DRIFT, 1200, 0, 7200))
        resolved = await eventually(lambda: alerts(client, status="resolved", rule="error_rate"), 90)
        assert [a["alert_id"] for a in resolved] == [alert["alert_id"]]
        await eventually(lambda: matches(client, traffic), 60)
        assert len(await alerts(client, rule="error_rate")) == 1  # deduplicated: one alert for the episode

        # Phase 4: an operator declares 25% the new normal; the same 20% no longer pages.
        resp = await client.post(
            f"/v1/pairs/{DRIFT[0]}/{DRIFT[1]}/rebaseline", json={"rule": "error_rate", "rate": 0.25}, headers=operator
        )
        assert resp.status_code == 202, resp.text
        await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 10_800))
        await eventually(lambda: matches(client, traffic), 60)
        assert len(await alerts(client, rule="error_rate")) == 1

        # The history says who did what and when; Alertmanager's webhook heard the resolve.
        everything = (await client.get(f"/v1/alerts/{alert['alert_id']}/history")).json()["items"]
        history = [h for h in everything if h["action"] != "evidence"]
        assert [h["action"] for h in history] == ["fired", "acknowledged", "resolved"]
        # The evidence as it stood at the alarm and at the resolve, in words.
        assert {h["event_id"].rsplit(":", 1)[1] for h in everything if h["action"] == "evidence"} == {
            "fired",
            "resolved",
        }
        assert history[1]["actor"] == "oncall-pm" and history[1]["comment"] == "looking at vendor training"
        rebaselined = (await client.get("/v1/history", params={"action": "rebaselined"})).json()["items"]
        assert len(rebaselined) == 1 and rebaselined[0]["vendor_id"] == DRIFT[1]
        await eventually(lambda: _resolved(hook, alert["alert_id"]), 60)
        csv_lines = (await client.get("/v1/alerts/export.csv", params={"rule": "error_rate"})).text.splitlines()
        assert len(csv_lines) == 2 and csv_lines[0].startswith("alert_id,") and alert["alert_id"] in csv_lines[1]

    await hook.stop()
    # Every service's real /metrics passes promtool; a real Prometheus scrapes them all, loads the
    # rules, and answers every dashboard panel's query.
    targets = {
        "modq-api": f"127.0.0.1:{api_port}",
        "modq-ingest": f"127.0.0.1:{ingest_port}",
        "modq-scorer": f"127.0.0.1:{env['MODQ_SCORER_WEB_PORT']}",
        "modq-notifier": f"127.0.0.1:{env['MODQ_NOTIFIER_PORT']}",
    }
    async with httpx.AsyncClient(timeout=10) as c:
        for job, target in targets.items():
            text = (await c.get(f"http://{target}/metrics")).text
            checked = promtool("check", "metrics", stdin=text)
            assert checked.returncode == 0 and "modq_" in text, (job, checked.stdout, checked.stderr)
        prom_port = free_port()
        prometheus(prom_port, targets)
        prom = f"http://127.0.0.1:{prom_port}/api/v1"

        async def all_up() -> bool:
            got = (await c.get(f"{prom}/query", params={"query": 'count(up{job=~"modq-.*"} == 1)'})).json()
            return bool(got["data"]["result"]) and got["data"]["result"][0]["value"][1] == "4"

        await eventually(all_up, 30)
        await asyncio.sleep(4)  # a few scrapes, so that rate() has two samples
        answered = {}
        for title, expr in panel_queries():
            got = (await c.get(f"{prom}/query", params={"query": expr})).json()
            assert got["status"] == "success", (title, expr, got)
            answered[expr] = got["data"]["result"]
        # (The traffic's event times are weeks old, so the 1h/24h error-rate gauges are empty here;
        # tests/integration/test_api_actions.py checks them.)
        for title in (
            "Throughput",
            "Drift statistic (log Shiryaev-Roberts sum) per pair",
            "Verdicts by error type",
            "Dead letters by reason",
        ):
            assert any(answered[e] for t, e in panel_queries() if t == title), title

        async def rules_evaluated() -> list[dict[str, Any]] | None:
            groups: list[dict[str, Any]] = (await c.get(f"{prom}/rules")).json()["data"]["groups"]
            assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups
            return groups if all(r["health"] == "ok" for g in groups for r in g["rules"]) else None

        rules = await eventually(rules_evaluated, 45)  # the recording group runs every 30 s
        assert {g["name"] for g in rules} == {"modq-recording", "modq-platform"}
    assert notifier.proc is not None and notifier.proc.poll() is None, notifier.output()[-3000:]
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


async def _resolved(hook: Recorder, alert_id: str) -> bool:
    return any(p["status"] == "resolved" and p["alerts"][0]["labels"]["alert_id"] == alert_id for p in hook.got("/am"))
