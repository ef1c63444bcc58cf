"""The whole pipeline on real parts: broker, PostgreSQL, ingest, Faust scorer and API as processes.

A drifting (policy_label, vendor_id) pair alerts and resolves, a stable pair stays quiet, and the
rates in the API equal the ground truth despite redelivery, verdicts that precede their decisions,
and bad records interleaved with good ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import httpx
import orjson
import pytest

from tests import factories
from tests.conftest import Service, eventually, free_port
from tests.kafkautil import consume_all, produce

pytestmark = pytest.mark.integration

DRIFT = ("SCAMS_AND_FRAUD", "V01", "DE")
STABLE = ("VIOLENCE", "V02", "FR")
AS_OF = factories.ts(6 * 3600)


class Traffic:
    """Builds upstream records and keeps the ground truth of what should be counted."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.rng = random.Random(42)
        self.truth: dict[tuple[str, str], dict[str, int]] = {}
        self.n = 0

    def phase(
        self, pair: tuple[str, str, str], count: int, error_every: int, t0: float
    ) -> list[tuple[str, bytes | None, bytes]]:
        label, vendor, market = pair
        out: list[tuple[str, bytes | None, bytes]] = []
        t = self.truth.setdefault((label, vendor), {"decisions": 0, "verdicts": 0, "errors": 0, "appeals": 0})
        for i in range(count):
            self.n += 1
            did = f"{vendor}-{self.n}"
            error = error_every > 0 and i % error_every == 0
            d = factories.decision(
                did, policy_label=label, vendor_id=vendor, market=market, event_time=factories.ts(t0 + i)
            )
            v = factories.verdict(did, error=error, event_time=factories.ts(t0 + i + 30))
            recs = [
                (self.env["MODQ_TOPIC_DECISIONS"], did.encode(), orjson.dumps(d)),
                (self.env["MODQ_TOPIC_VERDICTS"], did.encode(), orjson.dumps(v)),
            ]
            if i % 10 == 0:
                recs.reverse()  # the verdict precedes its decision
            if i % 17 == 0:
                recs.append(recs[0])  # redelivery
            if i % 25 == 0:
                recs.append(
                    (
                        self.env["MODQ_TOPIC_APPEALS"],
                        did.encode(),
                        orjson.dumps(factories.appeal(did, event_time=factories.ts(t0 + i + 60))),
                    )
                )
                t["appeals"] += 1
            if i % 40 == 0:
                recs.append((self.env["MODQ_TOPIC_VERDICTS"], b"bad", orjson.dumps({**v, "verdict": "MAYBE"})))
            out.extend(recs)
            t["decisions"] += 1
            t["verdicts"] += 1
            t["errors"] += error
        return out


async def rates(client: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, int]]:
    resp = await client.get("/v1/rates", params={"window": "24h", "as_of": AS_OF})
    resp.raise_for_status()
    return {
        (i["policy_label"], i["vendor_id"]): {
            "decisions": i["decisions"],
            "verdicts": i["verdicts"],
            "errors": i["errors"],
            "appeals": i["appeals"],
        }
        for i in resp.json()["items"]
    }


async def alerts(client: httpx.AsyncClient, **params: str) -> list[dict[str, object]]:
    resp = await client.get("/v1/alerts", params=params)
    resp.raise_for_status()
    return list(resp.json()["items"])


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

        async def api_up() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(api_up, 60)

        # Phase 1: both pairs at baseline (about 3%).
        await produce(bootstrap, traffic.phase(DRIFT, 700, 33, 0) + traffic.phase(STABLE, 700, 33, 0))
        await eventually(lambda: _matches(client, traffic), 120)
        assert await alerts(client) == []

        # Phase 2: the drifting pair jumps to 20% errors.
        await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 3600) + traffic.phase(STABLE, 400, 33, 3600))
        firing = await eventually(lambda: alerts(client, status="firing"), 90)
        assert len(firing) == 1
        alert = firing[0]
        assert (alert["policy_label"], alert["vendor_id"]) == DRIFT[:2]
        assert alert["observed_rate"] > alert["baseline_rate"] == 0.03
        assert alert["verdicts"] > 0 and alert["ci_low"] <= alert["observed_rate"] <= alert["ci_high"]

        ack = await client.post(f"/v1/alerts/{alert['alert_id']}/ack", json={"by": "oncall-pm"})
        assert ack.status_code == 200 and ack.json()["status"] == "acknowledged"

        # Phase 3: the pair recovers; the alert resolves by the downward test.
        await produce(bootstrap, traffic.phase(DRIFT, 1200, 0, 7200))
        resolved = await eventually(lambda: alerts(client, status="resolved"), 90)
        assert [a["alert_id"] for a in resolved] == [alert["alert_id"]]
        await eventually(lambda: _matches(client, traffic), 60)
        assert len(await alerts(client)) == 1  # deduplicated: one alert for the episode

    published = await consume_all(bootstrap, env["MODQ_TOPIC_ALERTS"], 2)
    statuses = [orjson.loads(r.value)["status"] for r in published]
    assert statuses == ["firing", "resolved"]
    assert {orjson.loads(r.value)["alert_id"] for r in published} == {alert["alert_id"]}
    dead = await consume_all(bootstrap, env["MODQ_TOPIC_DEADLETTER"], 1)
    assert dead and {dict(r.headers)["modq.reason"] for r in dead} == {b"schema"}
    assert scorer.proc is not None and scorer.proc.poll() is None, scorer.output()[-3000:]
    assert api.proc is not None and api.proc.poll() is None


async def _matches(client: httpx.AsyncClient, traffic: Traffic) -> bool:
    got = await rates(client)
    return got == traffic.truth
