"""API latency at a steady request rate, over PostgreSQL with realistic volumes.

Fills a fresh PostgreSQL database with one minute-bucket per (label, vendor, market) for the last
`--hours` hours (40 x 8 x 5 series) and `--alerts` alert rows, starts `modq api`, and sends
requests open-loop at `--rate` per second for `--seconds`, recording each latency. The baseline
is `GET /healthz` (no database) measured the same way in the same run.

The console's overview (``/ui``) is measured the same way: it is computed once per a few seconds per
(window, market) and shared by every page load (``services.api.ui.pages.OverviewCache``), so its
latency is a render of the page around a shared, pre-rendered grid; the recomputation every few
seconds runs beside the requests (they are served the previous answer meanwhile). The first load of a
(window, market) that nobody has asked for yet waits for its computation: measured on its own row.

Run: python bench/api_latency.py [--hours 2] [--alerts 1000000] [--rate 200] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from bench.cli import run
from bench.pg import create_database, drop_database
from bench.scorer_throughput import LABELS, MARKETS, VENDORS, free_port
from services.common.db import make_engine
from services.common.migrate import ensure_schema
from services.domain.rates import COUNT_FIELDS, Counts


async def fill(dsn: str, hours: int, n_alerts: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
        rnd = random.Random(1)
        rows = []
        for minute in range(hours * 60):
            start = now - timedelta(minutes=minute + 1)
            for label in LABELS:
                for vendor in VENDORS:
                    for market in MARKETS:
                        verdicts = rnd.randrange(0, 4)
                        errors = int(rnd.random() < 0.03 * verdicts)
                        counts = Counts(
                            verdicts=verdicts,
                            errors=errors,
                            over_enforcement=errors,
                            decisions=rnd.randrange(20, 80),
                            weighted_verdicts=float(verdicts),
                            weighted_errors=float(errors),
                            weighted_sq_verdicts=float(verdicts),
                            weighted_sq_errors=float(errors),
                        )
                        rows.append((label, vendor, market, start, *counts.values(), now))
        cols = ["policy_label", "vendor_id", "market", "bucket_start", *COUNT_FIELDS, "updated_at"]
        await conn.copy_records_to_table("rate_buckets", records=rows, columns=cols)
        alerts = []
        for i in range(n_alerts):
            t = now - timedelta(seconds=i * 30)
            label, vendor = LABELS[i % 40], VENDORS[i % 8]
            alerts.append(
                (
                    str(uuid.UUID(int=i)),
                    f"error_rate|{label}|{vendor}",
                    "error_rate",
                    label,
                    vendor,
                    "ANY",
                    "resolved" if i > 50 else "firing",
                    t,
                    t,
                    t if i > 50 else None,
                    0.03,
                    0.08,
                    0.05,
                    0.12,
                    400,
                    32,
                    7.0,
                    6.6,
                    "error rate rose",
                    now,
                )
            )
        acols = [
            "alert_id",
            "dedup_key",
            "rule",
            "policy_label",
            "vendor_id",
            "error_type",
            "status",
            "started_at",
            "onset_at",
            "resolved_at",
            "baseline_rate",
            "observed_rate",
            "ci_low",
            "ci_high",
            "verdicts",
            "errors",
            "statistic",
            "threshold",
            "summary",
            "updated_at",
        ]
        await conn.copy_records_to_table("alerts", records=alerts, columns=acols)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def load(client: httpx.AsyncClient, paths: list[str], rate: float, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0

    async def one(path: str) -> None:
        nonlocal errors
        t = time.perf_counter()
        try:
            resp = await client.get(path)
            errors += resp.status_code != 200
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - t)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(paths[i % len(paths)])))
    await asyncio.gather(*tasks)
    return latencies, errors


def summary(lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return f"{statistics.median(lat) * 1000:.1f} / {q[94] * 1000:.1f} / {q[98] * 1000:.1f}"


def start_api(env: dict[str, str], port: int, workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / "api.log", "wb")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "api", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def main_async(args: argparse.Namespace) -> str:
    name, url = await create_database()
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    workdir = Path(tempfile.mkdtemp(prefix="modq-api-bench-"))
    proc = None
    try:
        engine = make_engine(url)
        await ensure_schema(engine, auto_migrate=True)
        await engine.dispose()
        t = time.perf_counter()
        await fill(dsn, args.hours, args.alerts)
        print(
            f"filled {args.hours * 60 * 1600:,} buckets and {args.alerts:,} alerts in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODQ_")},
            "MODQ_DATABASE_URL": url,
            "MODQ_LOG_LEVEL": "WARNING",
        }
        proc = start_api(env, port, workdir)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=100)
        ) as client:
            for _ in range(100):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            first = (await client.get("/v1/alerts", params={"limit": 100})).json()
            cursor = first["next_cursor"]
            deep = (await client.get("/v1/alerts", params={"limit": 100, "cursor": cursor})).json()["next_cursor"]
            cases = {
                "GET /healthz (baseline, no database)": ["/healthz"],
                "GET /v1/rates?window=1h&policy_label=&vendor_id= (one pair)": [
                    f"/v1/rates?window=1h&policy_label={LABELS[i % 40]}&vendor_id={VENDORS[i % 8]}" for i in range(64)
                ],
                "GET /v1/rates?window=1h (all 320 pairs)": ["/v1/rates?window=1h"],
                "GET /v1/alerts?limit=100 (first page, 1M rows)": ["/v1/alerts?limit=100"],
                "GET /v1/alerts?limit=100&cursor= (a later page)": [f"/v1/alerts?limit=100&cursor={deep}"],
                "GET /v1/alerts?status=firing&vendor_id=V03": ["/v1/alerts?status=firing&vendor_id=V03"],
                "GET /ui (the console's overview: open alerts, 320-pair grid, 24h)": ["/ui"],
                "GET /ui?window=1h&market=DE": ["/ui?window=1h&market=DE"],
                "GET /ui/fragments/overview (its live refresh)": ["/ui/fragments/overview"],
            }
            rows = []
            cold = []  # a (window, market) nobody has asked for yet: the one load that waits for the computation
            for m in ["", *MARKETS]:
                t = time.perf_counter()
                resp = await client.get("/ui", params={"window": "7d", "market": m})
                cold.append(time.perf_counter() - t)
                assert resp.status_code == 200, resp.status_code
            rows.append(
                f"| GET /ui?window=7d&market=... first load of each of {len(cold)} filters (cold, one at a time) "
                f"| - | {statistics.median(cold) * 1000:.1f} / max {max(cold) * 1000:.1f} | 0 |"
            )
            print(rows[-1], flush=True)
            for title, paths in cases.items():
                await load(client, paths, 20, 1)  # warm up
                lat, failed = await load(client, paths, args.rate, args.seconds)
                rows.append(f"| {title} | {args.rate:.0f}/s | {summary(lat)} | {failed} |")
                await asyncio.sleep(2)
                print(rows[-1], flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        await drop_database(name)
    head = ["| request | rate | latency ms: median / p95 / p99 | failed |", "|---|---|---|---|"]
    return (
        "\n".join(head + rows) + f"\n\n{args.hours} h of minute buckets for 1,600 series; {args.alerts:,} alert rows.\n"
    )


def main() -> None:
    run(main_async, hours=2, alerts=1_000_000, rate=200.0, seconds=15.0)


if __name__ == "__main__":
    main()
