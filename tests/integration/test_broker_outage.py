"""The broker unreachable for 30 s (a TCP proxy in front of it drops every connection and refuses
new ones): ingest retries with backoff, reports not ready, recovers without a restart, and loses
no HTTP request it acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.common.auth import create_key
from services.common.db import make_engine
from services.common.migrate import ensure_schema
from services.contracts.batches import decode_batch
from services.devtools.broker import start_broker
from tests.support import factories
from tests.support.kafkautil import consume_all
from tests.support.pipeline_util import Mismatch
from tests.support.processes import Service, eventually, free_port

pytestmark = pytest.mark.integration


class Proxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection and refuse new ones for a while."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_broker_unreachable_for_30_seconds(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    broker_port, proxy_port, http_port = free_port(), free_port(), free_port()
    proxy = Proxy(proxy_port, broker_port)
    await proxy.start()
    broker = start_broker(broker_port, tmp_path / "broker.log", advertised_port=proxy_port)
    env = {**service_env, "MODQ_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{proxy_port}", "MODQ_DATABASE_URL": database_url}
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    _, key = await create_key(engine, "upstream", "publisher")
    await engine.dispose()
    ingest = spawn(["ingest", "--port", str(http_port)], env, "ingest")
    acknowledged: list[str] = []
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:

            async def ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get("/readyz")).status_code == 200
                return False

            async def post(batch: int) -> int:
                docs = [factories.decision(f"o{batch}-{i}") for i in range(50)]
                resp = await client.post("/v1/events/decisions", json=docs)
                if resp.status_code == 200:
                    acknowledged.extend(d["event_id"] for d in docs)  # type: ignore[misc]
                return resp.status_code

            await eventually(ready, 60)
            assert await post(0) == 200

            await proxy.cut()
            cut_at = time.monotonic()
            during = [asyncio.create_task(post(i)) for i in range(1, 4)]  # sent while the broker is away
            saw_not_ready = False
            while time.monotonic() - cut_at < 30:
                saw_not_ready |= not await ready()
                await asyncio.sleep(1)
            await proxy.start()
            codes = await asyncio.gather(*during)
            assert set(codes) <= {200, 503}, codes  # answered: acknowledged, or refused to be retried
            assert saw_not_ready, "ingest never reported not ready while the broker was away"

            await eventually(ready, 90)  # the same process: no restart
            assert await post(9) == 200

            async def all_acknowledged_scored() -> bool | set[str]:
                recs = await consume_all(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], env["MODQ_TOPIC_EVENTS"], 1, timeout=10)
                seen = {ev.event_id for r in recs for ev in decode_batch(r.value)}
                missing = set(acknowledged) - seen
                return True if not missing else Mismatch(missing=sorted(missing)[:10], count=len(missing))

            await eventually(all_acknowledged_scored, 90, interval=2)  # nothing acknowledged was lost
            assert len(acknowledged) >= 100
    finally:
        await proxy.cut()
        broker.terminate()
        broker.wait(10)
    assert ingest.proc is not None and ingest.proc.poll() is None, ingest.output()[-3000:]


async def test_scorer_rides_out_a_broker_outage(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    """The scorer with the broker away for 30 s between two halves of a stream: not ready while
    it is away, the same process carries on afterwards, and every count is exact."""
    from tests.support.scorerutil import exact, put_on_events_topic, scorer_metric
    from tests.support.streams import Stream, make_stream

    broker_port, proxy_port = free_port(), free_port()
    proxy = Proxy(proxy_port, broker_port)
    await proxy.start()
    broker = start_broker(broker_port, tmp_path / "broker.log", advertised_port=proxy_port)
    env = {**service_env, "MODQ_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{proxy_port}", "MODQ_DATABASE_URL": database_url}
    stream = make_stream(30_000)
    half = len(stream.events) // 2
    scorer = spawn(["scorer"], env, "scorer")
    web = f"http://127.0.0.1:{env['MODQ_SCORER_WEB_PORT']}"
    try:
        async with httpx.AsyncClient(base_url=web, timeout=5) as client:

            async def ready() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get("/readyz")).status_code == 200
                return False

            await put_on_events_topic(env, Stream(stream.events[:half]))
            await eventually(ready, 90)

            async def first_half_done() -> bool:
                return await scorer_metric(env["MODQ_SCORER_WEB_PORT"]) >= half

            await eventually(first_half_done, 90)
            await proxy.cut()
            cut_at = time.monotonic()
            saw_not_ready = False
            while time.monotonic() - cut_at < 30:
                saw_not_ready |= not await ready()
                await asyncio.sleep(1)
            await proxy.start()
            assert saw_not_ready, "the scorer never reported not ready while the broker was away"
            await put_on_events_topic(env, Stream(stream.events[half:]))
            await eventually(ready, 90)  # the same process: no restart
            await eventually(lambda: exact(database_url, stream.truth), 120, interval=1.0)
    finally:
        await proxy.cut()
        broker.terminate()
        broker.wait(10)
    assert scorer.proc is not None and scorer.proc.poll() is None, scorer.output()[-3000:]
