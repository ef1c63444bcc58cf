"""People's actions through the API: roles, silence, comment, manual resolve, history, CSV export.

Every action is published on modq.alert-actions (the log) and applied to PostgreSQL (the view).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from services.common.auth import create_key
from services.common.db import make_engine
from services.common.history import record_alert_change
from services.common.migrate import ensure_schema
from services.domain.book import BookWrite
from services.domain.rates import Counts
from services.scorer.sink import DbSink
from tests.support.factories import alert_event
from tests.support.kafkautil import consume_all
from tests.support.pipeline_util import api_ready
from tests.support.processes import Service, eventually, free_port

pytestmark = pytest.mark.integration


async def test_actions_are_authorised_recorded_published_and_exported(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    sink = DbSink(engine)
    for i in range(7):  # seven alerts: pages of three
        await record_alert_change(engine, alert_event(f"a-{i}", "firing", vendor=f"V{i:02d}"))
    # Buckets of the last hour for three pairs; with MODQ_METRIC_VENDORS=V01 the other two pool as "other".
    minute = int(datetime.now(tz=UTC).timestamp() // 60 * 60_000) - 120_000
    counts = {"V01": (200, 10), "V02": (100, 20), "V03": (100, 0)}
    rows = {("SCAMS_AND_FRAUD", v, "DE", minute): Counts(verdicts=n, errors=e) for v, (n, e) in counts.items()}
    await sink.claim([0])
    await sink.write_book(BookWrite({0: (rows, 1)}))
    _, operator_key = await create_key(engine, "pm-anna", "operator")
    _, viewer_key = await create_key(engine, "dashboard", "viewer")
    await engine.dispose()

    port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_METRIC_VENDORS": "V01"}
    spawn(["api", "--port", str(port)], env, "api")
    op = {"Authorization": f"Bearer {operator_key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)
        until = (datetime.now(tz=UTC) + timedelta(hours=2)).isoformat()

        silence = {"until": until, "comment": "vendor retraining"}
        assert (await client.post("/v1/pairs/SCAMS_AND_FRAUD/V01/silence", json=silence)).status_code == 401
        viewer = {"X-API-Key": viewer_key}
        assert (
            await client.post("/v1/pairs/SCAMS_AND_FRAUD/V01/silence", json=silence, headers=viewer)
        ).status_code == 403
        resp = await client.post("/v1/pairs/SCAMS_AND_FRAUD/V01/silence", json=silence, headers=op)
        assert resp.status_code == 200 and resp.json()["created_by"] == "pm-anna", resp.text
        past = {"until": "2020-01-01T00:00:00Z"}
        assert (await client.post("/v1/pairs/SCAMS_AND_FRAUD/V01/silence", json=past, headers=op)).status_code == 422
        assert [s["vendor_id"] for s in (await client.get("/v1/silences")).json()] == ["V01"]

        resp = await client.post("/v1/alerts/a-1/comments", json={"comment": "checked 20 items"}, headers=op)
        assert resp.status_code == 200
        resp = await client.post("/v1/alerts/a-1/resolve", json={"comment": "fixed upstream"}, headers=op)
        assert (
            resp.status_code == 200 and resp.json()["status"] == "resolved" and resp.json()["resolved_by"] == "pm-anna"
        )
        resp = await client.post("/v1/alerts/a-1/ack", headers=op)  # too late: a resolved alert stays resolved
        assert resp.status_code == 200 and resp.json()["status"] == "resolved"
        assert (await client.post("/v1/alerts/nope/ack", headers=op)).status_code == 404
        assert (await client.post("/v1/alerts/a-2/comments", json={"comment": ""}, headers=op)).status_code == 422

        history = (await client.get("/v1/alerts/a-1/history")).json()["items"]
        assert [h["action"] for h in history if h["action"] != "evidence"] == [
            "fired",
            "commented",
            "resolved",
            "acknowledged",
        ]
        assert history[1]["comment"] == "checked 20 items" and history[2]["actor"] == "pm-anna"

        # Keyset pages over the whole history: no row twice, none missing.
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/history", params=params)).json()
            seen += [h["event_id"] for h in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 7 + 4  # seven fired, one silence, comment, resolve, ack
        assert (await client.get("/v1/history", params={"cursor": "%%%"})).status_code == 400

        metrics = (await client.get("/metrics")).text
        sample = 'modq_error_rate_ratio{policy_label="SCAMS_AND_FRAUD",vendor_id="%s",window="1h"} %s'
        assert sample % ("V01", "0.05") in metrics and sample % ("other", "0.1") in metrics, metrics
        assert 'modq_alerts_open{rule="error_rate",status="firing"} 6.0' in metrics
        assert 'vendor_id="V02"' not in metrics  # bounded: only configured vendors get their own label

        # The request middleware: NUL refused before routing, requests counted by route template.
        assert (await client.get("/v1/alerts", params={"vendor_id": "V\x00"})).status_code == 400
        page = await client.get("/v1/alerts", params={"limit": 3})
        assert page.status_code == 200 and page.json()["items"][0]["started_at"].endswith("+00:00")
        assert (await client.get("/v1/alerts/a-0")).status_code == 200
        lines = (await client.get("/metrics")).text.splitlines()
        for sample in (
            'modq_api_requests_total{code="400",route="unmatched"} 1.0',
            'modq_api_requests_total{code="200",route="/v1/alerts"} 1.0',
            'modq_api_requests_total{code="200",route="/v1/alerts/{alert_id}"} 1.0',
            'modq_api_request_duration_seconds_count{route="/v1/alerts"} 1.0',
        ):
            assert sample in lines, sample

        export = await client.get("/v1/alerts/export.csv")
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert len(rows) == 7 and {r["alert_id"] for r in rows} == {f"a-{i}" for i in range(7)}
        assert next(r for r in rows if r["alert_id"] == "a-1")["resolved_by"] == "pm-anna"

    published = await consume_all(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], env["MODQ_TOPIC_ALERT_ACTIONS"], 4)
    actions = sorted(orjson.loads(r.value)["action"] for r in published)
    assert actions == ["acknowledged", "commented", "resolved", "silenced"]
    assert all(orjson.loads(r.value)["key_id"] for r in published)
