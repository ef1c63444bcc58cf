"""The `modq` command: dev, ingest, scorer, api, notifier, simulate, migrate, keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.config import CommonSettings

log = logging.getLogger("modq.cli")


def _ingest(args: argparse.Namespace) -> int:
    import uvicorn

    from services.common.config import IngestSettings
    from services.common.log import configure_logging
    from services.ingest.http import create_ingest_app
    from services.ingest.service import IngestService

    settings = IngestSettings()
    configure_logging(settings.log_level, "ingest")
    host = args.host or settings.ingest_host
    port = args.port or settings.ingest_port

    async def main() -> None:
        service = IngestService(settings)
        await service.start()
        server = uvicorn.Server(uvicorn.Config(create_ingest_app(service), host=host, port=port, log_config=None))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        consumer = asyncio.create_task(service.run(), name="ingest-consumer")
        http = asyncio.create_task(server.serve(), name="ingest-http")
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({consumer, http, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True  # uvicorn finishes the requests in flight (they need the producer)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(http), 30)
        await service.stop()  # finishes the in-flight poll's produce and commit
        for task in (consumer, http, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            if task is not stopper and task.exception():
                raise task.exception()  # type: ignore[misc]

    asyncio.run(main())
    return 0


def _notifier(args: argparse.Namespace) -> int:
    import uvicorn

    from services.common.config import NotifierSettings
    from services.common.log import configure_logging
    from services.notifier.http import create_notifier_app
    from services.notifier.service import Notifier, ensure_notifier_topics

    settings = NotifierSettings()
    configure_logging(settings.log_level, "notifier")
    if not _schema_ready(settings):
        return 2

    async def main() -> None:
        await ensure_notifier_topics(settings)
        notifier = Notifier(settings)
        await notifier.start()
        app = create_notifier_app(notifier)
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=args.host or settings.notifier_host, port=args.port or settings.notifier_port, log_config=None
            )
        )
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(notifier.stop()))
        http = asyncio.create_task(server.serve(), name="notifier-http")
        try:
            await notifier.run()  # returns after stop(): the lane in flight finishes its record first
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await http
            await notifier.close()

    asyncio.run(main())
    return 0


def _keys(args: argparse.Namespace) -> int:
    from services.common.auth import create_key, list_keys, revoke_key
    from services.common.config import CommonSettings
    from services.common.db import make_engine

    settings = CommonSettings()
    if not _schema_ready(settings):
        return 2

    async def main() -> int:
        engine = make_engine(settings.database_url)
        try:
            if args.keys_command == "create":
                key_id, key = await create_key(engine, args.name, args.role)
                print(f"key_id: {key_id}\nrole: {args.role}\nkey (shown once, store it now): {key}")
            elif args.keys_command == "revoke":
                if not await revoke_key(engine, args.key_id):
                    print(f"no active key {args.key_id}", file=sys.stderr)
                    return 1
                print(f"revoked {args.key_id}")
            else:
                for k in await list_keys(engine):
                    state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
                    print(f"{k['key_id']}\t{k['role']}\t{k['name']}\tcreated {k['created_at']}\t{state}")
            return 0
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _check_schema(url: str, auto_migrate: bool) -> None:
    from services.common.db import make_engine
    from services.common.migrate import ensure_schema

    async def check() -> None:
        engine = make_engine(url)
        try:
            await ensure_schema(engine, auto_migrate=auto_migrate)
        finally:
            await engine.dispose()

    asyncio.run(check())


def _schema_ready(settings: CommonSettings) -> bool:
    """Migrate or verify the schema; log why and return False when the service must not start."""
    from services.common.migrate import SchemaOutOfDate

    try:
        _check_schema(settings.database_url, settings.auto_migrate)
    except SchemaOutOfDate as exc:
        log.error(str(exc))
        return False
    return True


def _scorer(args: argparse.Namespace) -> int:
    from services.common.config import ScorerSettings
    from services.common.kafka import ensure_topics
    from services.common.log import configure_logging, json_logging_config
    from services.scorer.app import Scorer, make_worker
    from services.scorer.detection import monitors_changelog
    from services.scorer.stage import changelog_topic

    settings = ScorerSettings()
    configure_logging(settings.log_level, "scorer")
    if not _schema_ready(settings):
        return 2

    # Declared up front with the configured partition count: each stage checks that its changelog
    # has as many partitions as its source topic.
    changelogs = (changelog_topic(settings), monitors_changelog(settings))
    asyncio.run(
        ensure_topics(
            settings,
            {
                t: settings.partitions
                for t in (
                    settings.topic_events,
                    settings.topic_outcomes,
                    settings.topic_alerts,
                    settings.topic_remediations,
                    *changelogs,
                )
            },
            configs={c: {"cleanup.policy": "compact"} for c in changelogs},
        )
    )

    def exit_stalled(partitions: list[int]) -> None:
        os._exit(70)  # a hung Faust shutdown must not keep a stalled worker alive: Kubernetes restarts it

    scorer = Scorer(settings, on_stall=exit_stalled if settings.scorer_exit_on_stall else None)
    worker = make_worker(
        scorer,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        logging_config=json_logging_config(settings.log_level, settings.framework_log_level),
    )
    # What exists now (modules, Faust, SciPy) lives as long as the process: kept out of the
    # collector's full passes, which otherwise rescan it while the state grows. The scorer makes
    # and drops containers by the hundred thousand a second (rows of counts, decoded batches):
    # with the default thresholds the collector ran thousands of times a second, a third of a
    # backfill's time (docs/benchmarks.md, backfill).
    gc.freeze()
    gc.set_threshold(200_000, 50, 100)
    worker.execute_from_commandline()
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from services.api.app import create_api
    from services.common.config import ApiSettings
    from services.common.log import configure_logging

    settings = ApiSettings()
    configure_logging(settings.log_level, "api")
    if not _schema_ready(settings):
        return 2
    uvicorn.run(
        create_api(settings),
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_config=None,
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from services.common.config import CommonSettings
    from services.common.log import configure_logging
    from services.simulate import Drift, ReviewerDrift, SimConfig, run_simulator

    settings = CommonSettings()
    configure_logging(settings.log_level, "simulate")
    cfg = SimConfig(
        rate=args.rate,
        vendors=args.vendors,
        labels=args.labels,
        markets=args.markets,
        qa_fraction=args.qa_fraction,
        baseline=args.baseline,
        duration_s=args.duration,
        seed=args.seed,
        drifts=tuple(Drift.parse_all(args.drift)) if args.drift else (),
        reviewer_drift=ReviewerDrift.parse(args.reviewer_drift) if args.reviewer_drift else None,
    )
    with contextlib.suppress(KeyboardInterrupt):
        sent = asyncio.run(run_simulator(settings, cfg))
        print(f"sent {sent} records")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from services.common.config import CommonSettings
    from services.common.log import configure_logging

    settings = CommonSettings()
    configure_logging(settings.log_level, "migrate")
    _check_schema(settings.database_url, auto_migrate=True)
    print("database schema is at head")
    return 0


def _report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from pathlib import Path

    from services.common.config import ApiSettings
    from services.common.db import make_engine
    from services.common.reports import SECTIONS, to_csv, transparency

    def moment(text: str) -> datetime:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    settings = ApiSettings()
    _check_schema(settings.database_url, auto_migrate=False)
    start, end = moment(args.from_), moment(args.to)
    if not start < end:
        print("--from must be before --to", file=sys.stderr)
        return 2

    async def build() -> dict[str, object]:
        engine = make_engine(settings.database_url)
        try:
            return await transparency(engine, start, end, settings.report_min_verdicts)
        finally:
            await engine.dispose()

    report = asyncio.run(build())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for section in SECTIONS:
        path = out / f"transparency-{section}-{start.date()}-{end.date()}.csv"
        path.write_bytes(to_csv(section, report[section]).encode())  # type: ignore[arg-type]
        print(f"wrote {path} ({len(report[section])} rows)")  # type: ignore[arg-type]
    return 0


def _dev(args: argparse.Namespace) -> int:
    from services.dev import run_dev

    return run_dev(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modq", description="Moderation quality monitoring.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="start broker, database, all services and the simulator")
    dev.add_argument("--kafka-port", type=int, default=9092)
    dev.add_argument("--api-port", type=int, default=8000)
    dev.add_argument("--ingest-port", type=int, default=8081)
    dev.add_argument("--rate", type=float, default=400.0, help="simulated decisions per second")
    dev.add_argument(
        "--drift",
        default="vendor=V02,label=SCAMS_AND_FRAUD,market=DE,to=0.2,at=60;label=ip.trademark/counterfeit,to=0.08,at=90",
        help="drifts to inject (see modq simulate --help); the default: a market-local one and a label-wide one",
    )
    dev.add_argument(
        "--reviewer-drift",
        default="reviewer=qa-07,misses=0.8,at=60",
        help="a QA reviewer who drifts (see modq simulate --help): raises a reviewer alert",
    )
    dev.add_argument("--exit-after-alert", action="store_true", help="stop once the drift alert shows in the API")
    dev.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    dev.set_defaults(func=_dev)

    for name, func, helptext in (
        ("ingest", _ingest, "validate upstream events into the scorer topic; HTTP batch endpoint"),
        ("api", _api, "serve the HTTP API"),
        ("notifier", _notifier, "deliver alerts to Alertmanager, PagerDuty, Slack and a signed webhook"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
        p.set_defaults(func=func)

    sub.add_parser("scorer", help="run the Faust scorer worker").set_defaults(func=_scorer)
    sub.add_parser("migrate", help="upgrade the database schema to head").set_defaults(func=_migrate)

    keys = sub.add_parser("keys", help="manage API keys (viewer, operator, admin, publisher)")
    keys.set_defaults(func=_keys)
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key (recorded as the actor)")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin", "publisher"])
    ksub.add_parser("list", help="list keys (never the secrets)")
    revoke = ksub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")

    report = sub.add_parser("report", help="reports from the database")
    rsub = report.add_subparsers(dest="report_command", required=True)
    dsa = rsub.add_parser("transparency", help="the EU DSA transparency figures of a period, as CSV files")
    dsa.add_argument("--from", dest="from_", required=True, help="start of the period (event time), e.g. 2026-01-01")
    dsa.add_argument("--to", required=True, help="end of the period (event time), exclusive, e.g. 2026-07-01")
    dsa.add_argument("--out", required=True, help="directory for the CSV files (one per section)")
    dsa.set_defaults(func=_report)

    sim = sub.add_parser("simulate", help="publish realistic traffic to the upstream topics")
    sim.add_argument("--rate", type=float, default=400.0, help="decisions per second")
    sim.add_argument("--vendors", type=int, default=4)
    sim.add_argument("--labels", type=int, default=4)
    sim.add_argument("--markets", type=int, default=3)
    sim.add_argument("--qa-fraction", type=float, default=0.2)
    sim.add_argument("--baseline", type=float, default=0.03)
    sim.add_argument("--duration", type=float, default=None, help="seconds; forever when omitted")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument(
        "--drift",
        default=None,
        help='one pair: "vendor=V02,label=SCAMS_AND_FRAUD,to=0.09,at=120"; leave out vendor for a label-wide'
        " drift, label for a vendor-wide one; market=DE makes it market-local; several separated by ';'",
    )
    sim.add_argument(
        "--reviewer-drift",
        default=None,
        help='a QA reviewer who drifts from the truth: "reviewer=qa-07,misses=0.8,invents=0.05,at=60" (the'
        " share of real errors they miss and of correct decisions they call wrong, from second 60)",
    )
    sim.set_defaults(func=_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scorer":
        # Faust's worker parses sys.argv itself; give it nothing of ours.
        sys.argv = sys.argv[:1]
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
