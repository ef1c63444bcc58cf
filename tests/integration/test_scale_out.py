"""Several workers share the work by Kafka partitions, and counts and alerts stay exact as they come and go.

- Three `modq scorer` processes with one app id on a 200k-event stream; one is killed with -9 a
  third of the way through, a fourth joins later. Every (policy_label, vendor_id, minute) count
  in the database equals the truth, and the drifting pair has exactly one alert with one `fired`
  row: the first stage, the `detect` agent and the alert recorder all moved partitions.
- Two `modq ingest` processes in one consumer group, one killed with -9 mid-stream: every
  upstream event is counted once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from tests.support.pipeline_util import Traffic, api_ready, matches
from tests.support.processes import Service, eventually, free_port
from tests.support.scorerutil import assert_one_alert_for_the_drifting_pair, exact, put_on_events_topic, scorer_metric
from tests.support.streams import make_stream

pytestmark = pytest.mark.integration

EVENTS = 200_000
DECISIONS = int(EVENTS / (1 + 1 / 3 + 1 / 30))


def worker_env(env: dict[str, str], tmp_path: Path, n: int) -> dict[str, str]:
    """One worker's own web port and data directory; the app id (and so the groups) is shared."""
    return {**env, "MODQ_SCORER_WEB_PORT": str(free_port()), "MODQ_SCORER_DATA_DIR": str(tmp_path / f"worker-{n}")}


async def events_counted(envs: list[dict[str, str]]) -> float:
    return sum([await scorer_metric(e["MODQ_SCORER_WEB_PORT"]) for e in envs])


async def test_scorers_that_join_and_die_mid_stream_count_exactly(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_PARTITIONS": "6"}
    stream = make_stream(DECISIONS)
    envs = [worker_env(env, tmp_path, n) for n in range(4)]
    workers = [spawn(["scorer"], envs[n], f"scorer-{n}") for n in range(3)]
    spawn(["notifier", "--port", str(free_port())], env, "notifier")  # it writes the alert history

    async def all_ready() -> bool:
        async with httpx.AsyncClient(timeout=5) as web:
            for e in envs[:3]:
                try:
                    if (await web.get(f"http://127.0.0.1:{e['MODQ_SCORER_WEB_PORT']}/readyz")).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
        return True

    await eventually(all_ready, 120)
    await put_on_events_topic(env, stream)

    async def a_third_done() -> bool:
        return await events_counted(envs[:3]) >= len(stream.events) / 3

    await eventually(a_third_done, 180, interval=0.1)
    assert workers[0].stop(kill=True) == -9
    assert await events_counted(envs[1:3]) < len(stream.events), "killed too late to test anything"
    await asyncio.sleep(5)
    spawn(["scorer"], envs[3], "scorer-3")
    await eventually(lambda: exact(database_url, stream.truth), 300, interval=1.0)
    await assert_one_alert_for_the_drifting_pair(database_url)
    for w in workers[1:]:
        assert w.proc is not None and w.proc.poll() is None, w.output()[-3000:]


async def test_two_ingest_processes_in_one_group_count_every_event_once(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    api_port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_PARTITIONS": "4"}
    spawn(["scorer"], env, "scorer")
    spawn(["api", "--port", str(api_port)], env, "api")
    ingests = [spawn(["ingest", "--port", str(free_port())], env, f"ingest-{n}") for n in range(2)]
    traffic = Traffic(env)
    records = []
    for n, pair in enumerate((("SCAMS_AND_FRAUD", "V01", "DE"), ("counterfeit_goods", "V02", "FR"))):
        records += traffic.phase(pair, 6000, 40, n * 10_000)
    half = len(records) // 2

    def publish(part: list[tuple[str, bytes | None, bytes]]) -> None:
        producer = Producer({"bootstrap.servers": env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], "compression.type": "lz4"})
        for topic, key, value in part:
            producer.produce(topic, value=value, key=key)
        assert producer.flush(60) == 0

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        await eventually(lambda: api_ready(client), 60)
        await asyncio.to_thread(publish, records[:half])

        async def some_counted() -> bool:
            got = await client.get("/v1/rates", params={"window": "24h", "as_of": "2026-11-01T18:00:00Z"})
            return sum(i["decisions"] for i in got.json()["items"]) > 1000

        await eventually(some_counted, 120)
        assert ingests[0].stop(kill=True) == -9  # its uncommitted polls go to the other process
        await asyncio.to_thread(publish, records[half:])
        await eventually(lambda: matches(client, traffic), 180)
    assert ingests[1].proc is not None and ingests[1].proc.poll() is None, ingests[1].output()[-3000:]
