"""The whole pipeline (upstream JSON -> ingest -> scorer -> PostgreSQL -> API) at a fixed offered rate.

Everything runs on this machine as separate processes: a local Tansu broker, `modq ingest`,
`modq scorer` and `modq api` on a fresh PostgreSQL database, and a load generator that publishes
schema-valid upstream JSON (about 20 decisions per verdict, an appeal per 100 decisions, 2%
redelivered decisions, 40 labels x 8 vendors x 5 markets, verdicts for decisions up to two minutes
old) at ``--rate`` events per second for ``--seconds``. Every 5 s it samples what was published,
what ingest has handled and what the scorer has counted (each service's own counters), so the lag
of each stage is seen over time; at the end it waits for the backlog to drain and checks that the
API's decision count equals the decisions published. CPU seconds per process are read from /proc,
which is where a missed target shows its cause.

With ``--probes`` it also measures freshness: a verdict every 0.5 s for a pair nothing else
writes, timed from its publication until `GET /v1/rates` counts it; and every 5 s a burst of
errors on a fresh pair, timed from its publication until the drift alert is on the alert topic.

The baseline, measured in the same run after the pipeline: a raw aiokafka consumer decoding the
upstream decisions topic with orjson.

Run: python -m bench.pipeline [--rate 50000] [--seconds 300] [--probes 0] [--env NAME=value,...] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.cli import run
from bench.pg import create_database, drop_database
from bench.scorer_throughput import LABELS, MARKETS, VENDORS, free_port, metric, raw_consume
from services.devtools.broker import start_broker

PARTITIONS = 4
TOPICS = {"decision": "bench.decisions", "verdict": "bench.verdicts", "appeal": "bench.appeals"}
RATE_PROBE = ("FRESHNESS_PROBE", "PROBE")
ALERT_PROBE_LABEL = "DRIFT_PROBE"

DECISION = (
    b'{"schema_version":1,"event_id":"e-%s","event_time":"%s","decision_id":"%s","policy_label":"%s",'
    b'"vendor_id":"%s","market":"%s","action":"REMOVE","actor_type":"HUMAN","entity_type":"LISTING",'
    b'"entity_id":"x%s","queue_id":"q-1"}'
)
VERDICT = (
    b'{"schema_version":1,"event_id":"v-%s","event_time":"%s","verdict_id":"r-%s","decision_id":"%s",'
    b'"reviewer_id":"qa-1","verdict":"%s","error_type":"%s"}'
)
APPEAL = (
    b'{"schema_version":1,"event_id":"a-%s","event_time":"%s","appeal_id":"p-%s","decision_id":"%s",'
    b'"outcome":"OVERTURNED"}'
)


def iso_now() -> bytes:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


def decision(did: bytes, ts: bytes, label: str, vendor: str, market: str = "DE") -> bytes:
    return DECISION % (did, ts, did, label.encode(), vendor.encode(), market.encode(), did)


def verdict(did: bytes, ts: bytes, error: bool) -> bytes:
    return VERDICT % (
        did,
        ts,
        did,
        did,
        b"INCORRECT" if error else b"CORRECT",
        b"OVER_ENFORCEMENT" if error else b"NONE",
    )


class Batches:
    """Records gathered per (topic, partition) with aiokafka's batch builder: no per-record future."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.open: dict[tuple[str, int], Any] = {}
        self.sent: list[asyncio.Future[Any]] = []

    async def add(self, topic: str, partition: int, value: bytes) -> None:
        batch = self.open.get((topic, partition))
        if batch is None:
            batch = self.open[(topic, partition)] = self.producer.create_batch()
        if batch.append(key=None, value=value, timestamp=None) is None:  # full: send it, start another
            await self._send(topic, partition, self.open.pop((topic, partition)))
            await self.add(topic, partition, value)

    async def _send(self, topic: str, partition: int, batch: Any) -> None:
        batch.close()
        self.sent.append(await self.producer.send_batch(batch, topic, partition=partition))

    async def flush(self) -> None:
        for (topic, partition), batch in list(self.open.items()):
            await self._send(topic, partition, batch)
        self.open.clear()
        if self.sent:
            await asyncio.gather(*self.sent)
        self.sent = []


async def generate(
    bootstrap: str, rate: float, seconds: float, tag: str, published: Any, decisions: Any, cpu: Any
) -> None:
    """Publish the mix at ``rate`` upstream events per second, in 50 ms ticks.

    Shared values: events published, distinct decisions, and at the end the CPU seconds it used.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=524_288, acks=1)
    await producer.start()
    rnd = random.Random(7)
    n = 9_973
    pairs = [(rnd.choice(LABELS), rnd.choice(VENDORS), rnd.choice(MARKETS)) for _ in range(n)]
    errors = [rnd.random() < 0.03 for _ in range(n)]
    back = [rnd.randrange(0, max(1, int(rate * 120))) for _ in range(n)]  # verdict for a decision <= 2 min old
    prefix = tag.encode()
    out = Batches(producer)
    events, i, start = 0, 0, time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            ts = iso_now()
            plan = int(rate * elapsed)
            while events < plan:
                label, vendor, market = pairs[i % n]
                did = b"%s-%d" % (prefix, i)
                record = decision(did, ts, label, vendor, market)
                part = i % PARTITIONS
                await out.add(TOPICS["decision"], part, record)
                events += 1
                if i % 50 == 3:  # a redelivered decision: the same record again
                    await out.add(TOPICS["decision"], part, record)
                    events += 1
                if i % 20 == 0 and i > 0:
                    old = b"%s-%d" % (prefix, max(0, i - back[i % n]))
                    await out.add(TOPICS["verdict"], part, verdict(old, ts, errors[(i // 20) % n]))
                    events += 1
                if i % 100 == 7:
                    old = b"%s-%d" % (prefix, max(0, i - back[(i * 7) % n]))
                    await out.add(TOPICS["appeal"], part, APPEAL % (old, ts, old, old))
                    events += 1
                i += 1
            await out.flush()
            published.value, decisions.value = events, i
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - start - elapsed)))
    finally:
        await producer.stop()
        cpu.value = time.process_time()


class CountingProducer(AIOKafkaProducer):  # type: ignore[misc]
    """The bench's own producer (readiness check, probes): what it publishes is counted apart."""

    events = 0
    decisions = 0

    async def send(self, topic: str, value: bytes | None = None, *args: Any, **kwargs: Any) -> Any:
        self.events += 1
        self.decisions += topic == TOPICS["decision"]
        return await super().send(topic, value, *args, **kwargs)


def generator_process(*args: Any) -> None:
    asyncio.run(generate(*args))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a running process (0 once it is gone);
    pid 0: every PostgreSQL process on the machine together."""
    if pid == 0:
        return sum(cpu_seconds(int(p.name)) for p in Path("/proc").iterdir() if _is_postgres(p))
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def _is_postgres(proc: Path) -> bool:
    try:
        return proc.name.isdigit() and (proc / "comm").read_text().strip() == "postgres"
    except OSError:
        return False


@dataclass
class Probes:
    """Freshness measurements: seconds from publication to visibility."""

    rates: list[float] = field(default_factory=list)
    alerts: list[float] = field(default_factory=list)
    alerts_missed: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    return f"p50 {percentile(values, 0.5):.2f} s, p99 {percentile(values, 0.99):.2f} s, max {max(values):.2f} s"


async def wait_for(check: Callable[[], Any], limit_s: float, what: str) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if result := await check():
                return result
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


async def rates(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    r = await api.get("/v1/rates", params={"window": "1h", **params})
    r.raise_for_status()
    return list(r.json()["items"])


async def probe_freshness(
    producer: CountingProducer, api: httpx.AsyncClient, alerts_topic: str, bootstrap: str, seconds: float, tag: str
) -> Probes:
    """Rate probes every 0.5 s and alert probes every 5 s while the load runs."""
    out = Probes()
    label, vendor = RATE_PROBE
    ts = iso_now()
    n_rate, n_alert = int(seconds * 2) + 10, int(seconds / 5) + 2
    for k in range(n_rate):
        await producer.send(TOPICS["decision"], decision(b"%s-rp-%d" % (tag.encode(), k), ts, label, vendor))
    for j in range(n_alert):
        for k in range(40):
            did = b"%s-ap-%d-%d" % (tag.encode(), j, k)
            await producer.send(TOPICS["decision"], decision(did, ts, ALERT_PROBE_LABEL, f"PV{j:03d}"))
    await producer.flush()
    await wait_for(
        lambda: _probe_decisions_counted(api, n_rate), 180, "the probe decisions to show in the API (pipeline up)"
    )
    consumer = AIOKafkaConsumer(alerts_topic, bootstrap_servers=bootstrap, auto_offset_reset="latest")
    await consumer.start()
    await consumer.seek_to_end()
    sent_alert: dict[str, float] = {}
    seen_alert: dict[str, float] = {}

    async def watch_alerts() -> None:
        while True:
            polled = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for recs in polled.values():
                for rec in recs:
                    doc = orjson.loads(rec.value) if rec.value else {}
                    if doc.get("policy_label") == ALERT_PROBE_LABEL and doc.get("status") == "firing":
                        seen_alert.setdefault(str(doc["vendor_id"]), now)

    watcher = asyncio.create_task(watch_alerts())
    sent_rate: list[float] = []
    start = time.monotonic()
    try:
        next_rate, next_alert, j = start, start + 2.5, 0
        counted = 0
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now >= next_rate and len(sent_rate) < n_rate:
                did = b"%s-rp-%d" % (tag.encode(), len(sent_rate))
                await producer.send_and_wait(TOPICS["verdict"], verdict(did, iso_now(), False))
                sent_rate.append(now)
                next_rate += 0.5
            if now >= next_alert and j < n_alert:
                ts = iso_now()
                for k in range(40):
                    did = b"%s-ap-%d-%d" % (tag.encode(), j, k)
                    await producer.send(TOPICS["verdict"], verdict(did, ts, True))
                await producer.flush()
                sent_alert[f"PV{j:03d}"] = now
                j, next_alert = j + 1, next_alert + 5
            items = await rates(api, policy_label=label, vendor_id=vendor)
            seen = time.monotonic()
            verdicts = int(items[0]["verdicts"]) if items else 0
            while counted < min(verdicts, len(sent_rate)):
                out.rates.append(seen - sent_rate[counted])
                counted += 1
            await asyncio.sleep(0.05)
        await asyncio.sleep(10)  # late alerts still count (and show as slow)
    finally:
        watcher.cancel()
        await consumer.stop()
    out.alerts = [seen_alert[v] - t for v, t in sent_alert.items() if v in seen_alert]
    out.alerts_missed = len([v for v in sent_alert if v not in seen_alert])
    return out


async def _probe_decisions_counted(api: httpx.AsyncClient, n: int) -> bool:
    items = await rates(api, policy_label=RATE_PROBE[0], vendor_id=RATE_PROBE[1])
    return bool(items) and int(items[0]["decisions"]) >= n


def service_env(
    bootstrap: str, database_url: str, workdir: Path, tag: str, ports: dict[str, int], extra: str = ""
) -> dict[str, str]:
    """The services' environment; ``extra``: "NAME=value,NAME=value" settings on top (--env)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODQ_")},
        "MODQ_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MODQ_DATABASE_URL": database_url,
        "MODQ_TOPIC_DECISIONS": TOPICS["decision"],
        "MODQ_TOPIC_VERDICTS": TOPICS["verdict"],
        "MODQ_TOPIC_APPEALS": TOPICS["appeal"],
        "MODQ_PARTITIONS": str(PARTITIONS),
        "MODQ_SCORER_APP_ID": f"bench-{tag}",
        "MODQ_SCORER_INSTANCE_ID": f"bench-{tag}-0",
        "MODQ_INGEST_GROUP_ID": f"bench-ingest-{tag}",
        "MODQ_SCORER_WEB_PORT": str(ports["scorer"]),
        "MODQ_INGEST_PORT": str(ports["ingest"]),
        "MODQ_API_PORT": str(ports["api"]),
        "MODQ_SCORER_DATA_DIR": str(workdir / "data"),
        "MODQ_BASELINE_MODE": "sla",
        "MODQ_ARL0": "100000",
        "MODQ_LOG_LEVEL": "WARNING",
        **dict(item.split("=", 1) for item in extra.split(",") if item),
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


async def counters(client: httpx.AsyncClient, ports: dict[str, int]) -> tuple[float, float, float]:
    """(upstream events ingest has handled, events it accepted, events the scorer has counted)."""
    ingest = (await client.get(f"http://127.0.0.1:{ports['ingest']}/metrics")).text
    scorer = (await client.get(f"http://127.0.0.1:{ports['scorer']}/metrics")).text
    accepted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in ingest.splitlines()
        if line.startswith("modq_ingest_events_total{") and 'outcome="accepted"' in line
    )
    return metric(ingest, "modq_ingest_events_total"), accepted, metric(scorer, "modq_scorer_events_total")


async def main_async(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="modq-pipeline-"))
    tag = uuid.uuid4().hex[:6]
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = start_broker(port, workdir / "broker.log")
    db_name, database_url = await create_database()
    ports = {"scorer": free_port(), "ingest": free_port(), "api": free_port()}
    env = service_env(bootstrap, database_url, workdir, tag, ports, args.env)
    procs = {
        "ingest": start(["ingest"], env, workdir / "ingest.log"),
        "api": start(["api"], env, workdir / "api.log"),
    }
    await asyncio.sleep(5)  # ingest creates the topics
    procs["scorer"] = start(["scorer"], env, workdir / "scorer.log")
    producer = CountingProducer(bootstrap_servers=bootstrap, linger_ms=5)
    client = httpx.AsyncClient(timeout=10)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['api']}", timeout=10)
    ctx = mp.get_context("spawn")
    published, decisions, gen_cpu = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("d", 0.0)
    gen = ctx.Process(
        target=generator_process, args=(bootstrap, args.rate, args.seconds, tag, published, decisions, gen_cpu)
    )
    samples: list[tuple[float, int, float, float, float]] = []
    try:
        await producer.start()
        # Ready end to end: a decision published upstream shows in the API.
        ts = iso_now()
        await producer.send_and_wait(TOPICS["decision"], decision(f"{tag}-ready".encode(), ts, "READY", "READY"))
        await wait_for(lambda: rates(api, policy_label="READY"), 180, "the pipeline to count a first decision")
        pids = {"broker": broker.pid, **{k: p.pid for k, p in procs.items()}, "postgresql": 0}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        cpu0["bench (probes, sampling)"] = cpu_seconds(os.getpid())
        gen.start()
        t0 = time.monotonic()
        pids["load generator"], cpu0["load generator"] = gen.pid or -1, 0.0
        probes_task = (
            asyncio.create_task(probe_freshness(producer, api, "quality.alerts", bootstrap, args.seconds, tag))
            if args.probes
            else None
        )
        last, last_cpu = t0, dict(cpu0)
        while gen.is_alive():
            await asyncio.sleep(5)
            handled, accepted, scored = await counters(client, ports)
            samples.append((time.monotonic() - t0, published.value + producer.events, handled, accepted, scored))
            s = samples[-1]
            cpu = {k: cpu_seconds(pid) for k, pid in pids.items()}
            cores = "  ".join(f"{k} {(cpu[k] - last_cpu[k]) / (t0 + s[0] - last):.2f}" for k in cpu)
            last, last_cpu = t0 + s[0], cpu
            print(
                f"{s[0]:6.0f} s  published {s[1]:>10,}  ingest lag {s[1] - s[2]:>9,.0f}"
                f"  scorer lag {s[3] - s[4]:>9,.0f}  cores: {cores}",
                flush=True,
            )
        load_s = time.monotonic() - t0
        cpu1 = {k: cpu_seconds(pid) for k, pid in pids.items() if k != "load generator"}  # it has exited
        cpu1["bench (probes, sampling)"] = cpu_seconds(os.getpid())
        probes = await probes_task if probes_task else None
        total, unique = published.value, decisions.value
        drain_start = time.monotonic()

        async def drained() -> bool:
            handled, accepted, scored = await counters(client, ports)
            return handled >= total + producer.events and scored >= accepted

        await wait_for(drained, 600, "the backlog to drain")
        drain_s = time.monotonic() - drain_start
        await asyncio.sleep(3)  # one more flush to the database
        # What the generator published: the API's count less the bench's own decisions (readiness, probes).
        counted = sum(int(i["decisions"]) for i in await rates(api)) - producer.decisions
        raw = await raw_consume(bootstrap, TOPICS["decision"], int(unique * 0.9), lambda v: bool(orjson.loads(v)))
    finally:
        if gen.is_alive():
            gen.kill()
        await producer.stop()
        await client.aclose()
        await api.aclose()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.terminate()
        broker.wait(10)
        await drop_database(db_name)
    return report(args, samples, load_s, drain_s, total, unique, counted, raw, cpu0, cpu1, gen_cpu.value, probes)


def report(
    args: argparse.Namespace,
    samples: list[tuple[float, int, float, float, float]],
    load_s: float,
    drain_s: float,
    total: int,
    unique: int,
    counted: int,
    raw: float,
    cpu0: dict[str, float],
    cpu1: dict[str, float],
    gen_cpu: float,
    probes: Probes | None,
) -> str:
    lag = [(t, pub - handled, acc - scored) for t, pub, handled, acc, scored in samples]
    tail = [x for x in lag if x[0] >= load_s / 5]  # after the first fifth (warm-up)
    half = len(tail) // 2
    first, second = tail[:half] or tail, tail[half:] or tail
    mean = statistics.fmean
    achieved = total / load_s
    lines = [
        f"Offered {args.rate:,.0f} upstream events/s for {args.seconds:.0f} s: published {total:,} events "
        f"({unique:,} distinct decisions) at {achieved:,.0f}/s; backlog drained {drain_s:.1f} s after the load "
        f"stopped. The API counts {counted:,} decisions, {'equal to' if counted == unique else 'NOT equal to'} "
        f"the decisions published. Raw aiokafka + orjson consumer on the upstream decisions topic, same run: "
        f"{raw:,.0f} events/s; the pipeline kept up with {achieved / raw:.0%} of that rate.",
        "",
        "| stage | mean lag, first half (events) | mean lag, second half | max lag | lag trend (events/s) |",
        "|---|---|---|---|---|",
    ]
    for idx, stage in ((1, "ingest (published - handled)"), (2, "scorer (accepted - counted)")):
        # Least squares through the samples after the warm-up: near zero when the lag does not grow.
        trend = statistics.linear_regression([x[0] for x in tail], [x[idx] for x in tail]).slope if len(tail) > 1 else 0
        lines.append(
            f"| {stage} | {mean(x[idx] for x in first):,.0f} | {mean(x[idx] for x in second):,.0f} "
            f"| {max(x[idx] for x in lag):,.0f} | {trend:+,.0f} |"
        )
    lines += ["", "| process | CPU cores used during the load |", "|---|---|"]
    for name in cpu1:
        used = cpu1[name] - cpu0[name]
        lines.append(f"| {name} | {used / load_s:.2f} |")
    lines.append(f"| load generator | {gen_cpu / load_s:.2f} |")
    if probes is not None:
        lines += [
            "",
            f"Freshness: verdict to `GET /v1/rates`: {summary(probes.rates)} ({len(probes.rates)} probes); "
            f"error burst to firing alert on the alert topic: {summary(probes.alerts)} "
            f"({len(probes.alerts)} probes, {probes.alerts_missed} without an alert).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    run(main_async, rate=50_000.0, seconds=300.0, probes=0, env="")


if __name__ == "__main__":
    main()
