"""Scorer throughput against what the broker can deliver, measured in the same run.

A realistic mix (about 20 decisions per verdict, a few appeals, 40 labels x 8 vendors x 5 markets,
2% duplicates, verdicts out of order by up to a few minutes) is put on a local Tansu broker twice:
as upstream JSON (one event per record) and as the compact msgpack batches ingest hands the
scorer. Then, one after the other:
  1. raw aiokafka consumer + orjson on the JSON topic (the broker's ceiling for upstream events),
  2. raw aiokafka consumer + msgspec on the batch topic (the ceiling for the scorer's input),
  3. the real scorer (`modq scorer`, a separate process) on the batch topic, timed by its own
     `modq_scorer_events_total` from the first event processed to the last.

Run: python bench/scorer_throughput.py [--events 600000] [--partitions 4] [--out docs/perf-scorer.md]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.contracts.batches import (
    WireAppeal,
    WireDecision,
    WireEvent,
    WireVerdict,
    decode_batch,
    encode_batch,
    partition_for,
)
from services.devtools.broker import start_broker

LABELS = [f"LABEL_{i:02d}" for i in range(40)]
VENDORS = [f"V{i:02d}" for i in range(8)]
MARKETS = ["DE", "FR", "ES", "IT", "PL"]
T0 = 1_795_000_000_000


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SLICES = os.environ.get("MODQ_BENCH_SLICES", "1") != "0"
"""Decisions carry the attribution dimensions (0 in MODQ_BENCH_SLICES: none, for the core alone;
the full run measures both, see ``without_slices``)."""


def without_slices(wires: list[WireEvent]) -> list[WireEvent]:
    """The same events with the decisions' five attribution dimensions left out (the entity and
    action a remediation names kept): what the scorer does without the per-slice counts."""
    return [
        msgspec.structs.replace(w, queue_id="", model_version="", actor_type=-1, content_language="", policy_version="")
        if isinstance(w, WireDecision)
        else w
        for w in wires
    ]


def iso_ms(t_ms: int) -> str:
    """Epoch milliseconds as the schemas' RFC 3339 event time."""
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decision_event(i: int, t: int, label: str, vendor: str, market: str) -> tuple[dict[str, object], WireEvent]:
    """Decision number ``i`` at event time ``t`` (epoch ms): its upstream JSON doc and wire form."""
    did = f"d{i}"
    doc: dict[str, object] = {
        "schema_version": 1,
        "event_id": f"e-{did}",
        "event_time": iso_ms(t),
        "decision_id": did,
        "policy_label": label,
        "vendor_id": vendor,
        "market": market,
        "action": "REMOVE",
        "actor_type": "HUMAN",
        "entity_type": "LISTING",
        "entity_id": f"x{i}",
    }
    # Every dimension attribution counts, as a platform sends them (a slice row each per verdict).
    queue, model, language = f"q-{i % 7}", ("1.4", "1.5")[i % 2], market.lower()
    wire = WireDecision(
        f"e-{did}",
        did,
        t,
        label,
        vendor,
        market,
        queue,
        model,
        i % 3,
        language,
        "2026-10",
        "LISTING",
        f"x{i}",
        "REMOVE",
    )
    if not SLICES:
        return doc, without_slices([wire])[0]
    doc.update(queue_id=queue, model_version=model, content_language=language, policy_version="2026-10")
    return doc, wire


def make_events(
    n: int, seed: int = 1, keep_docs: bool = True, decisions_per_s: float = 200.0
) -> tuple[list[dict[str, object]], list[WireEvent]]:
    """n upstream events (JSON docs, unless not kept) and their wire forms, in arrival order;
    ``decisions_per_s`` decisions per second of event time (200: a day's stream replayed far
    faster than it happened, so nearly every minute of every series is a bucket row to write; at
    the rate the scorer is measured at, event time moves as fast as the clock: a live stream)."""
    spacing_us = 1_000_000 / decisions_per_s
    rnd = random.Random(seed)
    docs: list[dict[str, object]] = []
    wires: list[WireEvent] = []
    pending: list[tuple[int, int, dict[str, object], WireEvent]] = []  # a heap: verdicts released later
    i = 0
    while len(wires) < n:
        t = T0 + int(i * spacing_us) // 1000
        did = f"d{i}"
        label, vendor, market = rnd.choice(LABELS), rnd.choice(VENDORS), rnd.choice(MARKETS)
        doc, wire = decision_event(i, t, label, vendor, market)
        if keep_docs:
            docs.append(doc)
        wires.append(wire)
        if i % 20 == 0:  # one verdict per 20 decisions, released up to 36,000 events later (out of order)
            error = rnd.random() < 0.03
            v = {
                "schema_version": 1,
                "event_id": f"v-{did}",
                "event_time": iso_ms(t + 1000),
                "verdict_id": f"r-{did}",
                "decision_id": did,
                "reviewer_id": "qa",
                "verdict": "INCORRECT" if error else "CORRECT",
                "error_type": "OVER_ENFORCEMENT" if error else "NONE",
            }
            heapq.heappush(
                pending,
                (
                    len(wires) + rnd.randrange(0, 36_000),
                    i * 2,
                    v,
                    WireVerdict(f"v-{did}", did, t + 1000, f"r-{did}", int(error), int(error), "", 1.0),
                ),
            )
        if i % 100 == 7:
            a = {
                "schema_version": 1,
                "event_id": f"a-{did}",
                "event_time": iso_ms(t + 2000),
                "appeal_id": f"p-{did}",
                "decision_id": did,
                "outcome": "OVERTURNED",
            }
            heapq.heappush(
                pending,
                (
                    len(wires) + rnd.randrange(0, 36_000),
                    i * 2 + 1,
                    a,
                    WireAppeal(f"a-{did}", did, t + 2000, f"p-{did}", 1),
                ),
            )
        if rnd.random() < 0.02:  # a redelivered decision
            if keep_docs:
                docs.append(doc)
            wires.append(wire)
        while pending and pending[0][0] <= len(wires):
            _, _, d, w = heapq.heappop(pending)
            if keep_docs:
                docs.append(d)
            wires.append(w)
        i += 1
    return docs[:n], wires[:n]


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, p, 1) for t, p in topics.items()])
    finally:
        await admin.close()


async def fill(
    bootstrap: str,
    raw_topic: str,
    batch_topic: str,
    docs: list[dict[str, object]],
    wires: list[WireEvent],
    partitions: int,
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_048_576, max_request_size=8_388_608, acks=1
    )
    await producer.start()
    try:
        futs = []
        for d in docs:
            futs.append(await producer.send(raw_topic, orjson.dumps(d), key=str(d["decision_id"]).encode()))
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        return await send_batches(producer, batch_topic, wires, partitions)
    finally:
        await producer.stop()


async def send_batches(producer: AIOKafkaProducer, topic: str, wires: list[WireEvent], partitions: int) -> int:
    """The events as ingest hands them to the scorer: batches of up to 2,000 per partition, in
    order; returns the number of records, once the broker has them all."""
    by_partition: dict[int, list[WireEvent]] = defaultdict(list)
    futures = []
    for w in wires:
        p = partition_for(w.decision_id, partitions)
        by_partition[p].append(w)
        if len(by_partition[p]) >= 2_000:
            futures.append(await producer.send(topic, encode_batch(by_partition.pop(p)), partition=p))
    for p, batch in by_partition.items():
        futures.append(await producer.send(topic, encode_batch(batch), partition=p))
    await asyncio.gather(*futures)
    return len(futures)


@dataclass
class RawRun:
    rate: float  # events/s from the first record to the last
    cpu_rate: float  # events per CPU-second of this process over the same span


async def raw_consume(bootstrap: str, topic: str, expect: int, decode) -> RawRun:  # type: ignore[no-untyped-def]
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8_388_608,
        fetch_max_bytes=52_428_800,
    )
    await consumer.start()
    try:
        seen, start, cpu = 0, None, 0.0
        while seen < expect:
            polled = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for recs in polled.values():
                if start is None and recs:
                    start, cpu = time.perf_counter(), time.process_time()
                for r in recs:
                    seen += decode(r.value)
        assert start is not None
        return RawRun(expect / (time.perf_counter() - start), expect / (time.process_time() - cpu))
    finally:
        await consumer.stop()


def core_rate(wires: list[WireEvent]) -> tuple[float, float]:
    """The pure core alone (decode, join, encode state, group outcomes) on 2,000-event batches,
    and the mean stored bytes per decision (state plus key)."""
    from services.contracts.pairs import group_outcomes
    from services.domain.join import score_batch

    payloads = [encode_batch(wires[i : i + 2_000]) for i in range(0, len(wires), 2_000)]
    store: dict[bytes, bytes] = {}
    start = time.perf_counter()
    for offset, payload in enumerate(payloads):
        writes, deltas = score_batch(decode_batch(payload), store.get)
        store.update(writes)
        group_outcomes([(0, offset, deltas.outcomes)])
    rate = len(wires) / (time.perf_counter() - start)
    return rate, sum(len(k) + len(v) for k, v in store.items()) / len(store)


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def scorer_env(bootstrap: str, topic: str, partitions: int, workdir: Path) -> dict[str, str]:
    """A scorer of its own (app id, group, topics, database, data directory) on ``topic``."""
    tag = uuid.uuid4().hex[:6]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODQ_")},
        "MODQ_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MODQ_TOPIC_EVENTS": topic,
        "MODQ_PARTITIONS": str(partitions),
        "MODQ_SCORER_APP_ID": f"bench-{tag}",
        "MODQ_SCORER_INSTANCE_ID": f"bench-{tag}-0",
        "MODQ_SCORER_WEB_PORT": str(free_port()),
        "MODQ_TOPIC_OUTCOMES": f"bench-outcomes-{tag}",
        "MODQ_TOPIC_ALERTS": f"bench-alerts-{tag}",
        "MODQ_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / f'bench-{tag}.db'}",
        "MODQ_SCORER_DATA_DIR": str(workdir / f"data-{tag}"),
        "MODQ_BASELINE_MODE": "sla",
        "MODQ_ARL0": "100000",
        "MODQ_LOG_LEVEL": "WARNING",
    }


@dataclass
class ScorerRun:
    rate: float  # events/s from the first event counted to the last
    seconds: float  # from the start of the process to the last event counted
    rss: int  # resident bytes then
    peak_rss: int  # the process's peak resident bytes (VmHWM), up to ``settled_s``
    settled_s: float  # from the start of the process to the ``settle_on`` log line (else ``seconds``)
    cpu_rate: float = float("nan")  # events per CPU-second of the process (user + system), same span as ``rate``


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_bytes(pid: int, field: str) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0]) * 1024


def run_scorer(
    env: dict[str, str], expect: int, workdir: Path, log: str, memray: Path | None = None, settle_on: str = ""
) -> ScorerRun:
    """Start the scorer and wait until it has counted ``expect`` events (and, with ``settle_on``,
    until its log has that line: a restart's rate-book rebuild is written while processing goes
    on, and its peak memory counts too).

    The process is killed with SIGKILL at the end, as a crash would, so the next run with the
    same env recovers from the changelog. ``memray``: run it under memray's tracker writing there
    (stopped with SIGTERM instead, so the tracker can write its report).
    """
    port = env["MODQ_SCORER_WEB_PORT"]
    started = time.perf_counter()
    tracker = [str(Path(sys.executable).parent / "memray"), "run", "--aggregate", "-f", "-o", str(memray)]
    proc = subprocess.Popen(
        [*(tracker if memray else [sys.executable]), "-m", "services.cli", "scorer"],
        env=env,
        stdout=open(workdir / log, "wb"),  # noqa: SIM115 - owned by the child
        stderr=subprocess.STDOUT,
    )
    try:
        first: tuple[float, float, float] | None = None
        counted: ScorerRun | None = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = time.perf_counter()
            if counted is not None:
                if settle_on.encode() in (workdir / log).read_bytes():
                    counted.peak_rss = _status_bytes(proc.pid, "VmHWM")
                    counted.settled_s = now - started
                    return counted
                continue
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            done = metric(text, "modq_scorer_events_total")
            if done > 0 and first is None:
                first = (now, done, _cpu_s(proc.pid))
            if done >= expect:
                assert first is not None
                rate = (done - first[1]) / (now - first[0]) if now > first[0] else float("nan")
                cpu = _cpu_s(proc.pid) - first[2]
                rss = _status_bytes(proc.pid, "VmRSS")
                counted = ScorerRun(rate, now - started, rss, _status_bytes(proc.pid, "VmHWM"), now - started)
                counted.cpu_rate = (done - first[1]) / cpu if cpu > 0 else float("nan")
                if not settle_on:
                    return counted
        raise RuntimeError(f"scorer did not finish; see {workdir / log}")
    finally:
        if memray:
            proc.terminate()
            proc.wait(300)
        proc.kill()
        proc.wait(30)


async def produce_more(bootstrap: str, topic: str, partitions: int, n: int) -> None:
    """n new decisions after the end of the benchmark stream, for the restart measurement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8_388_608)
    await producer.start()
    try:
        by_partition: dict[int, list[WireEvent]] = defaultdict(list)
        for i in range(n):
            did = f"after-{i}"
            w = WireDecision(f"e-{did}", did, T0 + 10**10 + i, LABELS[i % 40], VENDORS[i % 8], "DE", "", "", 0)
            by_partition[partition_for(did, partitions)].append(w)
        for p, batch in by_partition.items():
            await (await producer.send(topic, encode_batch(batch), partition=p))
    finally:
        await producer.stop()


async def main_async(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="modq-bench-"))
    port = free_port()
    broker = start_broker(port, workdir / "broker.log")
    bootstrap = f"127.0.0.1:{port}"
    try:
        t = time.perf_counter()
        docs, wires = make_events(args.events, decisions_per_s=args.decisions_per_s)
        kinds = defaultdict(int)
        for w in wires:
            kinds[type(w).__name__] += 1
        raw_topic, batch_topic = "bench.raw", "bench.events"
        await create_topics(bootstrap, {raw_topic: args.partitions, batch_topic: args.partitions})
        await fill(bootstrap, raw_topic, batch_topic, docs, wires, args.partitions)
        print(
            f"generated and produced {args.events} events ({dict(kinds)}) in {time.perf_counter() - t:.1f} s",
            flush=True,
        )

        raw_json = (await raw_consume(bootstrap, raw_topic, args.events, lambda v: bool(orjson.loads(v)))).rate
        print(f"raw aiokafka + orjson (JSON, 1 event/record): {raw_json:,.0f} events/s", flush=True)
        raw_first = await raw_consume(bootstrap, batch_topic, args.events, lambda v: len(decode_batch(v)))
        raw_batches = raw_first.rate
        print(f"raw aiokafka + msgspec (batches): {raw_batches:,.0f} events/s", flush=True)
        env = scorer_env(bootstrap, batch_topic, args.partitions, workdir)
        measured = run_scorer(env, args.events, workdir, "scorer.log")
        scorer = measured.rate
        print(f"modq scorer: {scorer:,.0f} events/s, RSS {measured.rss / 2**20:.0f} MiB", flush=True)
        # Restart: the process above was killed with SIGKILL; new events wait on the topic; a new
        # process recovers every decision from the changelog, then counts them.
        await produce_more(bootstrap, batch_topic, args.partitions, 10_000)
        verbose = {**env, "MODQ_LOG_LEVEL": "INFO", "MODQ_FRAMEWORK_LOG_LEVEL": "INFO"}  # the log has the timeline
        restart_s = run_scorer(verbose, 10_000, workdir, "scorer-restart.log").seconds
        print(f"restart after kill -9: processing again, 10,000 new events counted, {restart_s:.1f} s", flush=True)
        core, per_decision = core_rate(wires)
        print(f"pure core: {core:,.0f} events/s; {per_decision:.0f} bytes stored per decision", flush=True)
        slices = await compare_slices(bootstrap, wires, args, raw_first, measured, core, per_decision)
    finally:
        broker.terminate()
        broker.wait(10)
    table = [
        "| measurement | events/s | scorer as share |",
        "|---|---|---|",
        f"| raw aiokafka consumer + orjson, upstream JSON topic | {raw_json:,.0f} | {scorer / raw_json:.0%} |",
        f"| raw aiokafka consumer + msgspec, scorer's batch topic | {raw_batches:,.0f} | {scorer / raw_batches:.0%} |",
        f"| modq scorer (one process, {args.partitions} partitions) | {scorer:,.0f} | |",
        f"| the scorer's pure core alone, no I/O | {core:,.0f} | |",
    ]
    return "\n".join(table) + (
        f"\n\n{args.events:,} events, {args.decisions_per_s:,.0f} decisions per second of event time;"
        f" scorer resident memory at the end: {measured.rss / 2**20:.0f} MiB; "
        f"{per_decision:.0f} bytes stored per decision (state and key). Restart after kill -9 with that "
        f"state: {restart_s:.1f} s from the new process's start until 10,000 new events were counted.\n" + slices
    )


async def compare_slices(
    bootstrap: str,
    wires: list[WireEvent],
    args: argparse.Namespace,
    raw_first: RawRun,
    first: ScorerRun,
    core_on: float,
    bytes_on: float,
) -> str:
    """The per-slice counts' cost: the same events without the decisions' five attribution
    dimensions on a topic of their own, each variant's scorer against the raw consumer of its own
    topic, the scorer runs alternated, each preceded by a run of the raw consumer of its topic (the
    first run with the dimensions, its raw consumer and pure core are the ones above). Medians of
    each: a single raw run varies by 10-15% on this machine, as much as the effect measured."""
    topic = "bench.events-noslice"
    bare = without_slices(wires)
    await create_topics(bootstrap, {topic: args.partitions})
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_048_576, max_request_size=8_388_608, acks=1
    )
    await producer.start()
    try:
        await send_batches(producer, topic, bare, args.partitions)
    finally:
        await producer.stop()
    workdir = Path(tempfile.mkdtemp(prefix="modq-bench-slices-"))
    runs: dict[bool, list[ScorerRun]] = {True: [first], False: []}
    raws: dict[bool, list[RawRun]] = {True: [raw_first], False: []}
    for with_slices in [k % 2 == 1 for k in range(2 * args.slice_pairs - 1)]:
        source = "bench.events" if with_slices else topic
        raw = await raw_consume(bootstrap, source, args.events, lambda v: len(decode_batch(v)))
        raws[with_slices].append(raw)
        env = scorer_env(bootstrap, source, args.partitions, workdir)
        run = run_scorer(env, args.events, workdir, f"scorer-{len(runs[with_slices])}-{with_slices}.log")
        runs[with_slices].append(run)
        print(
            f"dimensions {'on' if with_slices else 'off'}: raw {raw.rate:,.0f} ({raw.cpu_rate:,.0f} per CPU-s),"
            f" modq scorer {run.rate:,.0f} ({run.cpu_rate:,.0f} per CPU-s) events/s",
            flush=True,
        )
    core_off, bytes_off = core_rate(bare)
    rss_on = max(r.rss for r in runs[True]) / 2**20
    rss_off = max(r.rss for r in runs[False]) / 2**20

    def row(name: str, v: bool, core: float, stored: float, rss: float) -> str:
        raw, cpu_raw = statistics.median([r.rate for r in raws[v]]), statistics.median([r.cpu_rate for r in raws[v]])
        scorer = statistics.median([r.rate for r in runs[v]])
        cpu_scorer = statistics.median([r.cpu_rate for r in runs[v]])
        each = ", ".join(f"{r.rate:,.0f}" for r in runs[v])
        return (
            f"| {name} | {raw:,.0f} | {scorer:,.0f} ({each}) | {scorer / raw:.1%} | {cpu_raw:,.0f} | {cpu_scorer:,.0f}"
            f" | {cpu_scorer / cpu_raw:.1%} | {core:,.0f} | {stored:.0f} | {rss:.0f} |"
        )

    def share(v: bool, cpu: bool) -> float:
        if cpu:
            return statistics.median([r.cpu_rate for r in runs[v]]) / statistics.median([r.cpu_rate for r in raws[v]])
        return statistics.median([r.rate for r in runs[v]]) / statistics.median([r.rate for r in raws[v]])

    wall, per_cpu = share(True, False) / share(False, False) - 1, share(True, True) / share(False, True) - 1
    return "\n".join(
        [
            "",
            "The per-slice counts (the same events with and without the decisions' five attribution"
            f" dimensions; {len(runs[True])} scorer runs with and {len(runs[False])} without, alternated, each"
            " after a run of the raw consumer of its topic; medians; wall-clock events/s and events per"
            " CPU-second of the process, which the other processes on the machine disturb less):",
            "",
            "| | raw, events/s | scorer, events/s (each run) | share of raw | raw, per CPU-s | scorer, per CPU-s"
            " | share of raw (CPU) | pure core, events/s | bytes stored per decision | scorer RSS, MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
            row("with the dimensions", True, core_on, bytes_on, rss_on),
            row("without", False, core_off, bytes_off, rss_off),
            "",
            f"The scorer's share of the raw consumer with the per-slice counts: {wall:+.1%} wall-clock,"
            f" {per_cpu:+.1%} per CPU-second (target: a drop of at most 10%).",
            "",
        ]
    )


def main() -> None:
    if __package__ in (None, ""):  # run as a script (python bench/scorer_throughput.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import run

    run(main_async, events=600_000, partitions=4, decisions_per_s=200.0, slice_pairs=2)


if __name__ == "__main__":
    main()
