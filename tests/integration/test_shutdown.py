"""Ingest stopped in the middle of a stream (SIGTERM, kill -9) and restarted."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable

import httpx
import orjson
import pytest

from services.contracts.batches import decode_batch
from tests.support import factories
from tests.support.kafkautil import consume_all, produce
from tests.support.processes import Service, free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_ingest_stopped_mid_stream_loses_nothing(
    service_env: dict[str, str], spawn: Callable[..., Service], sig: signal.Signals
) -> None:
    """SIGTERM: nothing lost, nothing repeated. kill -9: nothing lost; what was produced but not
    committed is produced again (at most the polls in flight), and the scorer counts it once."""
    env = {**service_env, "MODQ_INGEST_BATCH_MAX_EVENTS": "500", "MODQ_INGEST_REQUIRE_KEY": "false"}
    n = 30_000
    records = [(env["MODQ_TOPIC_DECISIONS"], None, orjson.dumps(factories.decision(f"s{i}"))) for i in range(n)]
    await produce(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], records)
    port = free_port()
    ingest = spawn(["ingest", "--port", str(port)], env, "ingest")

    async def accepted() -> float:
        try:
            async with httpx.AsyncClient() as c:
                text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return 0.0
        lines = [ln for ln in text.splitlines() if ln.startswith("modq_ingest_events_total{") and "accepted" in ln]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    async def emitted() -> Counter[str]:
        batches = await consume_all(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], env["MODQ_TOPIC_EVENTS"], 1, timeout=20)
        return Counter(ev.event_id for rec in batches for ev in decode_batch(rec.value))

    for _ in range(400):  # wait until it is mid-stream
        await asyncio.sleep(0.05)
        if await accepted() > 0:
            break
    assert ingest.proc is not None
    ingest.proc.send_signal(sig)
    assert ingest.proc.wait(timeout=30) == (0 if sig == signal.SIGTERM else -9), ingest.output()[-3000:]
    partial = sum((await emitted()).values())
    assert partial < n and (partial > 0 or sig == signal.SIGKILL), partial  # stopped in the middle

    spawn(["ingest", "--port", str(free_port())], env, "ingest-2")
    got: Counter[str] = Counter()
    for _ in range(30):
        await asyncio.sleep(2)
        got = await emitted()
        if sum(got.values()) >= n:
            break
    assert len(got) == n, f"{n - len(got)} events missing"
    if sig == signal.SIGTERM:
        assert max(got.values()) == 1, "events sent twice after a graceful stop"
    else:
        assert sum(got.values()) - n <= 2 * 500 * 2, "more repeated than the polls in flight"
