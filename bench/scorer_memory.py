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
    ScorerRun,
    create_topics,
    free_port,
    make_events,
    produce_more,
    run_scorer,
    scorer_env,
    send_batches,
)
from services.contracts.batches import WireEvent
from services.devtools.broker import start_broker


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
    rows: list[tuple[str, ScorerRun, ScorerRun | None]] = []
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
            fill = run_scorer(env, args.events, workdir, f"scorer-{store[:-3]}.log", memray)
            print(
                f"{store}: {fill.rate:,.0f} events/s, RSS {fill.rss / 2**20:,.0f} MiB"
                f" (peak {fill.peak_rss / 2**20:,.0f} MiB)",
                flush=True,
            )
            if memray:
                summary = [str(Path(sys.executable).parent / "memray"), "summary", "-r", "40", str(memray)]
                done = await asyncio.to_thread(subprocess.run, summary, capture_output=True, text=True, check=False)
                print(done.stdout, flush=True)
                rows.append((store, fill, None))
                continue
            await produce_more(bootstrap, topic, args.partitions, 10_000)
            verbose = {**env, "MODQ_LOG_LEVEL": "INFO"}
            # Until the rebuilt rate book is in the database too: it is written while processing
            # goes on, and the peak memory of the restart includes it.
            restart = run_scorer(
                verbose, 10_000, workdir, f"scorer-{store[:-3]}-restart.log", settle_on="rate book rebuilt"
            )
            print(
                f"{store}: restart {restart.seconds:.1f} s, rebuild written at {restart.settled_s:.1f} s,"
                f" RSS {restart.rss / 2**20:,.0f} MiB, peak {restart.peak_rss / 2**20:,.0f} MiB",
                flush=True,
            )
            rows.append((store, fill, restart))
            args.events += 10_000  # the next scorer counts the new events too
    finally:
        broker.terminate()
        broker.wait(10)
        for db_name in databases:
            await drop_database(db_name)
    mib = 2**20
    table = [
        "| decision store | events/s | resident memory at the end (peak) | restart after kill -9: new events"
        " counted / rebuilt book written | peak resident memory of the restart |",
        "|---|---|---|---|---|",
    ]
    for store, fill, restart in rows:
        after = (
            f"{restart.seconds:.1f} s / {restart.settled_s:.1f} s | {restart.peak_rss / mib:,.0f} MiB"
            if restart is not None
            else "- | -"
        )
        table.append(
            f"| `{store}` | {fill.rate:,.0f} | {fill.rss / mib:,.0f} MiB ({fill.peak_rss / mib:,.0f} MiB) | {after} |"
        )
    return (
        "\n".join(table)
        + f"\n\n{decisions:,} distinct decisions in the stream, one scorer process, {args.partitions} partitions,"
        f" database {args.database}.\n"
    )


def main() -> None:
    run(main_async, events=10_000_000, partitions=4, stores="memory://,rocksdb://", memray="", database="postgresql")


if __name__ == "__main__":
    main()
