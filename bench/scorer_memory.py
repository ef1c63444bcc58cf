"""Scorer memory and restart time with many decisions awaiting verdicts, per state store.

The same stream as ``scorer_throughput`` (about 95% decisions, verdicts out of order, appeals,
duplicates) is put on a local Tansu broker as the compact batches ingest hands the scorer. Then,
for each store (the in-memory dict first, as the baseline of the same run, then RocksDB):
  1. the real scorer (`modq scorer`, a separate process) counts the whole stream: events/s and
     its resident memory at the end;
  2. it is killed with SIGKILL, 10,000 new events are put on the topic, and a new process
     recovers the decision state from the changelog: seconds from its start until it has
     counted the new events.

Run: python -m bench.scorer_memory [--events 10000000] [--partitions 4] [--database postgresql|sqlite]
[--out docs/perf-memory.md]. The scorer writes to a fresh PostgreSQL database (as in production;
``MODQ_BENCH_PG_DSN`` names the server), or with ``--database sqlite`` to a SQLite file.

Where the memory goes: ``--stores rocksdb:// --memray /tmp/scorer.memray`` runs the scorer under
memray (``pip install memray``) and prints the allocations alive at its high-water mark by place
(``memray summary``); the restart is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench.cli import run
from bench.pg import create_database, drop_database
from bench.scorer_throughput import (
    create_topics,
    free_port,
    make_events,
    produce_more,
    run_scorer,
    scorer_env,
    send_batches,
)
from services.common.broker import start_broker
from services.common.wire import WireEvent


async def fill_batches(bootstrap: str, topic: str, wires: list[WireEvent], partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=8_388_608, acks=1)
    await producer.start()
    try:
        await send_batches(producer, topic, wires, partitions)
    finally:
        await producer.stop()


async def main_async(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="modq-bench-memory-"))
    port = free_port()
    broker = start_broker(port, workdir / "broker.log")
    bootstrap = f"127.0.0.1:{port}"
    rows = []
    databases: list[str] = []
    try:
        t = time.perf_counter()
        _, wires = make_events(args.events, keep_docs=False)
        decisions = len({w.decision_id for w in wires})
        topic = "bench.events"
        await create_topics(bootstrap, {topic: args.partitions})
        await fill_batches(bootstrap, topic, wires, args.partitions)
        del wires
        print(f"generated and produced {args.events:,} events in {time.perf_counter() - t:.1f} s", flush=True)
        for store in args.stores.split(","):
            env = scorer_env(bootstrap, topic, args.partitions, workdir)
            if args.database == "postgresql":  # as in production; SQLite is the dev default
                db_name, env["MODQ_DATABASE_URL"] = await create_database()
                databases.append(db_name)
            env["MODQ_SCORER_STORE"] = store
            env["MODQ_SCORER_DATA_DIR"] = str(workdir / f"data-{store[:-3]}")
            memray = Path(args.memray) if args.memray else None
            rate, _, rss = run_scorer(env, args.events, workdir, f"scorer-{store[:-3]}.log", memray)
            print(f"{store}: {rate:,.0f} events/s, RSS {rss / 2**20:,.0f} MiB", flush=True)
            if memray:
                summary = [str(Path(sys.executable).parent / "memray"), "summary", "-r", "40", str(memray)]
                done = await asyncio.to_thread(subprocess.run, summary, capture_output=True, text=True, check=False)
                print(done.stdout, flush=True)
                rows.append((store, rate, rss, float("nan"), 0))
                continue
            await produce_more(bootstrap, topic, args.partitions, 10_000)
            verbose = {**env, "MODQ_LOG_LEVEL": "INFO"}
            _, restart_s, restart_rss = run_scorer(verbose, 10_000, workdir, f"scorer-{store[:-3]}-restart.log")
            print(f"{store}: restart {restart_s:.1f} s, RSS after {restart_rss / 2**20:,.0f} MiB", flush=True)
            rows.append((store, rate, rss, restart_s, restart_rss))
            args.events += 10_000  # the next scorer counts the new events too
    finally:
        broker.terminate()
        broker.wait(10)
        for db_name in databases:
            await drop_database(db_name)
    table = [
        "| decision store | events/s | resident memory at the end | restart after kill -9 (until new events"
        " counted) | resident memory after the restart |",
        "|---|---|---|---|---|",
        *(
            f"| `{store}` | {rate:,.0f} | {rss / 2**20:,.0f} MiB | {restart:.1f} s | {rrss / 2**20:,.0f} MiB |"
            for store, rate, rss, restart, rrss in rows
        ),
    ]
    return (
        "\n".join(table)
        + f"\n\n{decisions:,} distinct decisions in the stream, one scorer process, {args.partitions} partitions,"
        f" database {args.database}.\n"
    )


def main() -> None:
    run(main_async, events=10_000_000, partitions=4, stores="memory://,rocksdb://", memray="", database="postgresql")


if __name__ == "__main__":
    main()
