"""State survives a crash: kill -9 the scorer mid-stream, restart it, and the counts are exact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.support.kafkautil import produce
from tests.support.pipeline_util import DRIFT, STABLE, Traffic, alerts, api_ready, matches
from tests.support.processes import Service, eventually, free_port


# A restarted scorer that finds a partition stalled exits for its supervisor to restart it (the
# stall watchdog); the test stands in for the supervisor. 20 consecutive runs passed on the code of
# this stop (docs/benchmarks.md, "The restart test"); the failure message carries what the scorer
# processed against what ingest produced, and where its tasks wait, should one ever fail.
async def diagnose(env: dict[str, str]) -> str:
    """What the scorer processed versus what ingest produced, for a failure message."""
    from services.contracts.batches import decode_batch
    from tests.support.kafkautil import consume_all

    records = await consume_all(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], env["MODQ_TOPIC_EVENTS"], 1, timeout=10)
    per_partition: dict[int, list[int]] = {}
    for r in records:
        per_partition.setdefault(r.partition, []).append(len(decode_batch(r.value)))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['MODQ_SCORER_WEB_PORT']}") as web:
        text = (await web.get("/metrics")).text
        tasks = (await web.get("/debug/tasks")).text
    lines = [ln for ln in text.splitlines() if ln.startswith(("modq_scorer_events_total", "modq_scorer_batches_total"))]
    agents = "\n".join(b for b in tasks.split("--- ") if "Agent" in b or "score" in b or "_put" in b)
    return f"events topic batches per partition: {per_partition}; scorer: {lines}\n{agents[-6000:]}"


pytestmark = [pytest.mark.integration, pytest.mark.restart]


async def test_scorer_killed_mid_stream_recovers_its_state(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    api_port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_SCORER_STALL_TIMEOUT_S": "20"}
    scorer = spawn(["scorer"], env, "scorer-1")
    spawn(["notifier", "--port", str(free_port())], env, "notifier")  # it writes the alert history
    spawn(["ingest", "--port", str(free_port())], env, "ingest")
    spawn(["api", "--port", str(api_port)], env, "api")
    traffic = Traffic(env)
    bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)
        # Decisions first, so their state must survive the crash for the verdicts to join.
        first = traffic.phase(DRIFT, 800, 33, 0) + traffic.phase(STABLE, 800, 33, 0)
        decisions = [r for r in first if r[0] == env["MODQ_TOPIC_DECISIONS"]]
        rest = [r for r in first if r[0] != env["MODQ_TOPIC_DECISIONS"]]
        await produce(bootstrap, decisions)

        async def some_decisions_counted() -> bool:
            got = await client.get("/v1/rates", params={"window": "24h", "as_of": "2026-11-01T18:00:00Z"})
            return got.status_code == 200 and sum(i["decisions"] for i in got.json()["items"]) > 0

        await eventually(some_decisions_counted, 120)
        await asyncio.sleep(1.0)
        assert scorer.stop(kill=True) == -9
        await produce(bootstrap, rest)  # verdicts and appeals arrive while the scorer is down
        scorers = [spawn(["scorer"], env, "scorer-2")]

        async def supervised_matches() -> object:
            # Stand-in for the process supervisor: a scorer that exits (on a detected stall) is restarted.
            if scorers[-1].proc is not None and scorers[-1].proc.poll() is not None:
                scorers.append(spawn(["scorer"], env, f"scorer-{len(scorers) + 2}"))
            return await matches(client, traffic)

        try:
            await eventually(supervised_matches, 240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await diagnose(env)}") from None
        await produce(bootstrap, traffic.phase(DRIFT, 400, 5, 3600))
        firing = await eventually(lambda: alerts(client, status="firing", rule="error_rate"), 120)
        assert [(a["policy_label"], a["vendor_id"]) for a in firing] == [DRIFT[:2]]
        assert {(a["policy_label"], a["vendor_id"]) for a in await alerts(client)} == {DRIFT[:2]}
        await eventually(lambda: matches(client, traffic), 60)
