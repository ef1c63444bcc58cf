"""Backfill: modq deployed onto topics that already hold days of history, replayed into PostgreSQL.

A stream of ``--days`` of event time at ``--decisions-per-s`` decisions per second (about 20
decisions per verdict, 3% errors, verdicts up to 30 minutes after their decision and out of order,
appeals, 2% redelivered decisions; 40 labels x 8 vendors x 5 markets) is put on a local Tansu
broker twice: as upstream JSON (one event per record) and as the batches ingest hands the scorer.
Two large pairs (4% of the decisions each) drift from 3% to 20% errors: one for 2 hours from a
quarter of the way in, one for the last 2 hours (which fires more than the horizon behind the
newest event and is still firing when the scorer gets there). Then, in one run:
  1. the raw aiokafka consumer + orjson on the JSON topic: the baseline;
  2. the backfill: `modq scorer` (a separate process) on the whole batch topic, into a fresh
     PostgreSQL database, timed from its first event counted to the moment the database holds
     every count; its progress report (event time reached, events/s, time left) sampled from
     /readyz and its log while it catches up;
  3. the same events processed live: another scorer and database, the batches published a slice
     at a time as it keeps up, so it is never far behind;
then the two databases' counts are compared with the truth, and the two alert histories with each
other (the backfill's old alerts are recorded as history, not paged: ``historical``).

The issue's figure is 7 days at 50 decisions/s (30M decisions). The default here is 1 day at
50/s (4.3M decisions): the same density of events per series and minute, so the same rows per
event for the database, with a state that fits this machine's memory next to two databases.
``--days 7 --decisions-per-s 50`` runs the full size.

Run: python -m bench.backfill [--days 1] [--decisions-per-s 50] [--partitions 4] [--out docs/perf-backfill.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import msgspec
import orjson
from aiokafka import AIOKafkaProducer

from bench.cli import run
from bench.pg import create_database, drop_database
from bench.scorer_throughput import (
    LABELS,
    MARKETS,
    T0,
    VENDORS,
    create_topics,
    decision_event,
    free_port,
    iso_ms,
    metric,
    raw_consume,
    scorer_env,
    send_batches,
)
from services.contracts.alerts import dedup_key
from services.contracts.batches import WireAppeal, WireEvent, WireVerdict
from services.devtools.broker import start_broker

OLD_DRIFT = ("LABEL_07", "V03")  # 20% errors for 2 hours from a quarter of the span: history
NEW_DRIFT = ("LABEL_11", "V05")  # 20% errors in the last 2 hours: raised as history, still firing: news


def encode(doc: dict[str, object]) -> bytes:
    """JSON bytes of exactly their size (orjson 3.13 keeps 4 KiB behind each small document it
    writes: 19 GiB for this stream's 4.7 million)."""
    return msgspec.json.encode(doc)


@dataclass
class Stream:
    docs: list[bytes] = field(default_factory=list)  # upstream JSON, in arrival order
    wires: list[WireEvent] = field(default_factory=list)
    truth: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # pair -> [decisions, verdicts, errors]


def make_stream(days: float, decisions_per_s: float, seed: int = 5) -> Stream:
    rnd = random.Random(seed)
    out = Stream()
    truth: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    span_ms = int(days * 86_400_000)
    n = int(days * 86_400 * decisions_per_s)
    # The drifting pairs see about 360 verdicts an hour at 50 decisions/s; the others about 26.
    old_from = T0 + span_ms // 4
    old_to = old_from + min(2 * 3_600_000, span_ms // 8)
    new_from = T0 + span_ms - min(2 * 3_600_000, span_ms // 8)
    pending: list[tuple[int, int, bytes, WireEvent]] = []  # by release time: verdicts come later

    def emit(doc: dict[str, object], wire: WireEvent) -> None:
        out.docs.append(encode(doc))
        out.wires.append(wire)

    for i in range(n):
        t = T0 + i * span_ms // n
        while pending and pending[0][0] <= t:
            _, _, doc, wire = heapq.heappop(pending)
            out.docs.append(doc)
            out.wires.append(wire)
        did = f"d{i}"
        pick = rnd.random()
        if pick < 0.04:  # the drifting pairs are large ones: 4% of the traffic each
            label, vendor = OLD_DRIFT
        elif pick < 0.08:
            label, vendor = NEW_DRIFT
        else:
            label, vendor = rnd.choice(LABELS), rnd.choice(VENDORS)
        market = rnd.choice(MARKETS)
        doc, wire = decision_event(i, t, label, vendor, market)
        emit(doc, wire)
        truth[(label, vendor)][0] += 1
        if rnd.random() < 0.02:  # redelivered: counted once
            emit(doc, wire)
        if i % 20 == 0:
            rate = 0.03
            if ((label, vendor) == OLD_DRIFT and old_from <= t < old_to) or (
                (label, vendor) == NEW_DRIFT and t >= new_from
            ):
                rate = 0.2
            error = rnd.random() < rate
            kind = rnd.choice(("OVER_ENFORCEMENT", "OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL"))
            error_type = kind if error else "NONE"
            tv = t + rnd.randrange(1_000, 1_800_000)  # judged up to 30 minutes later
            v = {
                "schema_version": 1,
                "event_id": f"v-{did}",
                "event_time": iso_ms(tv),
                "verdict_id": f"r-{did}",
                "decision_id": did,
                "reviewer_id": "qa",
                "verdict": "INCORRECT" if error else "CORRECT",
                "error_type": error_type,
            }
            code = ("NONE", "OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL").index(error_type)
            w = WireVerdict(f"v-{did}", did, tv, f"r-{did}", int(error), code, "", 1.0)
            heapq.heappush(pending, (tv, 2 * i, encode(v), w))
            truth[(label, vendor)][1] += 1
            truth[(label, vendor)][2] += error
        if i % 100 == 7:
            ta = t + rnd.randrange(60_000, 3_600_000)
            a = {
                "schema_version": 1,
                "event_id": f"a-{did}",
                "event_time": iso_ms(ta),
                "appeal_id": f"p-{did}",
                "decision_id": did,
                "outcome": "OVERTURNED",
            }
            heapq.heappush(pending, (ta, 2 * i + 1, encode(a), WireAppeal(f"a-{did}", did, ta, f"p-{did}", 1)))
    while pending:
        _, _, doc, wire = heapq.heappop(pending)
        out.docs.append(doc)
        out.wires.append(wire)
    out.truth = dict(truth)
    return out


async def fill(bootstrap: str, raw_topic: str, batch_topic: str, stream: Stream, partitions: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_048_576, max_request_size=8_388_608, acks=1
    )
    await producer.start()
    try:
        futures = []
        for i, doc in enumerate(stream.docs):
            futures.append(await producer.send(raw_topic, doc, partition=i % partitions))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        await send_batches(producer, batch_topic, stream.wires, partitions)
    finally:
        await producer.stop()


@dataclass
class Backfill:
    seconds_counted: float  # first event counted to the last
    seconds_written: float  # first event counted to every count and alert in the database
    peak_rss: int
    progress: list[dict[str, object]]  # /readyz samples while catching up
    log_lines: list[str]


async def database_counts(url: str) -> tuple[int, int]:
    """(decisions, verdicts) in the database, summed over every row."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await conn.fetchrow("SELECT coalesce(sum(decisions), 0), coalesce(sum(verdicts), 0) FROM rate_buckets")
        return int(row[0]), int(row[1])
    except asyncpg.UndefinedTableError:
        return 0, 0
    finally:
        await conn.close()


def truth_counts(stream: Stream) -> tuple[int, int]:
    return sum(t[0] for t in stream.truth.values()), sum(t[1] for t in stream.truth.values())


async def database_truth(url: str) -> dict[tuple[str, str], list[int]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT policy_label, vendor_id, sum(decisions), sum(verdicts), sum(errors) FROM rate_buckets GROUP BY 1, 2"
        )
        return {(r[0], r[1]): [int(r[2]), int(r[3]), int(r[4])] for r in rows if any(r[2:])}
    finally:
        await conn.close()


async def database_alerts(url: str) -> dict[str, tuple[str, str, str, bool, str]]:
    """alert_id -> (dedup key, status, started_at, historical, onset_at)."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT alert_id, dedup_key, status, started_at, historical, onset_at FROM alerts")
        return {r[0]: (r[1], r[2], r[3].isoformat(), r[4], r[5].isoformat()) for r in rows}
    finally:
        await conn.close()


async def alerts_settled(url: str, quiet_s: float = 3.0) -> float:
    """Wait until the alert rows have not changed for ``quiet_s`` (the recorder is behind the
    detectors); returns ``time.perf_counter()`` when they last changed."""
    last, since = None, time.perf_counter()
    while time.perf_counter() - since < quiet_s:
        now = await database_alerts(url)
        if now != last:
            last, since = now, time.perf_counter()
        await asyncio.sleep(0.1)
    return since


def start_service(args: list[str], env: dict[str, str], workdir: Path, log: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        stdout=open(workdir / log, "wb"),
        stderr=subprocess.STDOUT,
    )


def start_scorer(env: dict[str, str], workdir: Path, log: str) -> subprocess.Popen[bytes]:
    return start_service(["scorer"], env, workdir, log)


async def start_notifier(env: dict[str, str], workdir: Path, log: str) -> subprocess.Popen[bytes]:
    """The notifier, ready: its history lane records the alerts in the database (no receivers)."""
    port = free_port()
    proc = start_service(["notifier", "--port", str(port)], env, workdir, log)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as web:
        for _ in range(240):
            with contextlib.suppress(httpx.HTTPError):
                if (await web.get("/readyz")).status_code == 200:
                    return proc
            await asyncio.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the notifier did not get ready; see {workdir / log}")


def _status_kib(pid: int, field: str) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0]) * 1024


async def backfill(env: dict[str, str], url: str, stream: Stream, workdir: Path) -> Backfill:
    """The scorer on the whole topic: from its first event counted until the database has every count
    and every alert (the detectors have seen every verdict and the alert rows are still)."""
    expect_events, expect = len(stream.wires), truth_counts(stream)
    notifier = await start_notifier(env, workdir, "backfill-notifier.log")
    proc = start_scorer(env, workdir, "backfill.log")
    port = env["MODQ_SCORER_WEB_PORT"]
    progress: list[dict[str, object]] = []
    first = counted = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as web:
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                # Every second: /metrics takes tens of milliseconds to write with hundreds of pairs
                # (Prometheus scrapes every 15-30 s; polled four times a second it cost a fifth).
                await asyncio.sleep(1.0)
                now = time.perf_counter()
                try:
                    text = (await web.get("/metrics")).text
                    done = metric(text, "modq_scorer_events_total")
                    ready = (await web.get("/readyz")).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if ready.get("progress") and ready["progress"]["catching_up"]:
                    progress.append(ready["progress"])
                if done > 0 and first is None:
                    first = now
                if done >= expect_events and counted is None:
                    counted = now
                judged = metric(text, "modq_scorer_verdicts_total")
                if counted is not None and judged >= expect[1] and await database_counts(url) >= expect:
                    assert first is not None
                    now = max(now, await alerts_settled(url))  # the quiet period itself does not count
                    lines = (workdir / "backfill.log").read_text().splitlines()
                    return Backfill(
                        counted - first,
                        now - first,
                        _status_kib(proc.pid, "VmHWM"),
                        progress,
                        [ln for ln in lines if '"catching up"' in ln or '"caught up"' in ln],
                    )
        raise RuntimeError(f"the backfill did not finish; see {workdir / 'backfill.log'}")
    finally:
        for p in (proc, notifier):
            p.terminate()
            p.wait(60)


async def live(env: dict[str, str], url: str, bootstrap: str, stream: Stream, partitions: int, workdir: Path) -> float:
    """The same events processed live: published a slice at a time, each once the scorer has the
    one before, so it is never more than a slice (of the span's event time) behind; done when the
    database has every count."""
    topic = env["MODQ_TOPIC_EVENTS"]
    await create_topics(bootstrap, {topic: partitions})
    notifier = await start_notifier(env, workdir, "live-notifier.log")
    proc = start_scorer(env, workdir, "live.log")
    port = env["MODQ_SCORER_WEB_PORT"]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=8_388_608, acks=1)
    await producer.start()
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as web:
            while True:  # ready first: the live scorer takes its partitions before any event
                with contextlib.suppress(httpx.HTTPError):
                    if (await web.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.5)
            slices = 200
            step = len(stream.wires) // slices + 1
            sent = 0
            for i in range(0, len(stream.wires), step):
                await send_batches(producer, topic, stream.wires[i : i + step], partitions)
                sent += len(stream.wires[i : i + step])
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if metric((await web.get("/metrics")).text, "modq_scorer_events_total") >= sent:
                            break
                    await asyncio.sleep(0.1)
            expect = truth_counts(stream)
            while await database_counts(url) < expect:  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.5)
            while metric((await web.get("/metrics")).text, "modq_scorer_verdicts_total") < expect[1]:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            await alerts_settled(url)
        return time.perf_counter() - started
    finally:
        await producer.stop()
        for p in (proc, notifier):
            p.terminate()
            p.wait(60)


def notifier_env() -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {"MODQ_NOTIFIER_GROUP_ID": f"bench-notifier-{tag}", "MODQ_TOPIC_ALERT_ACTIONS": f"bench-actions-{tag}"}


async def main_async(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="modq-bench-backfill-"))
    port = free_port()
    broker = start_broker(port, workdir / "broker.log")
    bootstrap = f"127.0.0.1:{port}"
    databases: list[str] = []
    try:
        t = time.perf_counter()
        stream = make_stream(args.days, args.decisions_per_s)
        n = len(stream.wires)
        raw_topic, batch_topic = "bench.raw", "bench.events"
        await create_topics(bootstrap, {raw_topic: args.partitions, batch_topic: args.partitions})
        await fill(bootstrap, raw_topic, batch_topic, stream, args.partitions)
        print(f"generated and produced {n:,} events in {time.perf_counter() - t:.0f} s", flush=True)
        # The baseline twice, its better run kept: a broker still busy from the fill reads slower.
        raws = [await raw_consume(bootstrap, raw_topic, n, lambda v: bool(orjson.loads(v))) for _ in range(2)]
        raw = max(raws)
        print(
            f"raw aiokafka + orjson (JSON, 1 event/record): {', '.join(f'{r:,.0f}' for r in raws)} events/s", flush=True
        )

        name, url = await create_database()
        databases.append(name)
        env = {
            **scorer_env(bootstrap, batch_topic, args.partitions, workdir),
            "MODQ_DATABASE_URL": url,
            "MODQ_LOG_LEVEL": "INFO",
            **notifier_env(),
        }
        env.pop("MODQ_SCORER_INSTANCE_ID")
        done = await backfill(env, url, stream, workdir)
        rate_counted, rate_written = n / done.seconds_counted, n / done.seconds_written
        print(f"backfill: {rate_written:,.0f} events/s into PostgreSQL ({rate_written / raw:.0%})", flush=True)
        backfilled = await database_truth(url)

        live_name, live_url = await create_database()
        databases.append(live_name)
        live_env = {
            **scorer_env(bootstrap, f"bench.live-{uuid.uuid4().hex[:6]}", args.partitions, workdir),
            "MODQ_DATABASE_URL": live_url,
            **notifier_env(),
        }
        live_env.pop("MODQ_SCORER_INSTANCE_ID")
        live_s = await live(live_env, live_url, bootstrap, stream, args.partitions, workdir)
        lived = await database_truth(live_url)
        a_back, a_live = await database_alerts(url), await database_alerts(live_url)
    finally:
        broker.terminate()
        broker.wait(10)
        for name in databases:
            await drop_database(name)
    exact_back, exact_live = backfilled == stream.truth, lived == stream.truth
    for name_, got in (("backfill", backfilled), ("live", lived)):
        wrong = {k: (got.get(k), v) for k, v in stream.truth.items() if got.get(k) != v}
        if wrong:
            print(f"{name_}: {len(wrong)} pairs differ, e.g. {list(wrong.items())[:3]}", flush=True)
    same_alerts = {k: v[:2] for k, v in a_back.items()} == {k: v[:2] for k, v in a_live.items()}
    same_times = {k: (v[2], v[4]) for k, v in a_back.items()} == {k: (v[2], v[4]) for k, v in a_live.items()}
    drifting = {dedup_key("error_rate", *pair) for pair in (OLD_DRIFT, NEW_DRIFT)}
    missed = sorted(drifting - {v[0] for v in a_back.values()})
    historical = sorted(v[0] for v in a_back.values() if v[3])
    current = sorted(v[0] for v in a_back.values() if not v[3])
    mid = done.progress[len(done.progress) // 2] if done.progress else {}
    table = [
        "| measurement | events/s | share of the raw consumer |",
        "|---|---|---|",
        f"| raw aiokafka consumer + orjson, upstream JSON topic | {raw:,.0f} | |",
        "| backfill into PostgreSQL: first event counted to every count and alert in the database |"
        f" {rate_written:,.0f} | {rate_written / raw:.0%} |",
        f"| (the scorer's own count: first event to last) | {rate_counted:,.0f} | {rate_counted / raw:.0%} |",
    ]
    return "\n".join(table) + (
        f"\n\n{args.days:g} days of event time at {args.decisions_per_s:g} decisions/s: {n:,} events"
        f" ({sum(t[0] for t in stream.truth.values()):,} decisions, {sum(t[1] for t in stream.truth.values()):,}"
        f" verdicts), {args.partitions} partitions, one scorer process (memory store), peak resident memory"
        f" {done.peak_rss / 2**20:.0f} MiB; backfill {done.seconds_written:.0f} s.\n\n"
        f"- counts equal to the truth: backfill {exact_back}, live {exact_live} (live: {live_s:.0f} s, 200"
        " slices, each published once the scorer had the one before)\n"
        f"- alerts: backfill {len(a_back)}, live {len(a_live)}; same ids and statuses: {same_alerts};"
        f" same started_at and onset_at: {same_times}\n"
        f"- error-rate alerts missing for the two drifting pairs: {missed or 'none'}\n"
        f"- the backfill's alerts recorded as history (not paged): {historical}; current (paged): {current}\n"
        f"- progress while catching up, /readyz mid-way: {mid}\n"
        f"- log: {done.log_lines[0][:400] if done.log_lines else '(none)'}\n"
    )


def main() -> None:
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    run(main_async, days=1.0, decisions_per_s=50.0, partitions=4)


if __name__ == "__main__":
    main()
