"""`modq dev`: everything on embedded defaults in one process tree; Ctrl-C stops all of it."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.devtools.broker import port_open, start_broker, wait_for_port

DEV_DIR = Path(".modq-dev")


LOG_NAMES: dict[int, str] = {}  # pid -> the service whose log is .modq-dev/logs/<name>.log


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(DEV_DIR / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *argv], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    LOG_NAMES[proc.pid] = name
    return proc


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def dev_ports(args: argparse.Namespace, env: dict[str, str], external_kafka: bool) -> list[tuple[int, str]]:
    """The 127.0.0.1 ports ``modq dev`` will listen on, each with how to move it."""
    ports = [
        (args.api_port, "the API; --api-port"),
        (args.ingest_port, "ingest's HTTP endpoint; --ingest-port"),
        (int(env.get("MODQ_SCORER_WEB_PORT", "6066")), "the scorer's web port; MODQ_SCORER_WEB_PORT"),
        (int(env.get("MODQ_NOTIFIER_PORT", "8082")), "the notifier's web port; MODQ_NOTIFIER_PORT"),
    ]
    if not external_kafka:
        ports.insert(0, (args.kafka_port, "the local Kafka broker; --kafka-port"))
    return ports


def run_dev(args: argparse.Namespace) -> int:
    (DEV_DIR / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    external_kafka = "MODQ_KAFKA_BOOTSTRAP_SERVERS" in env
    ports = dev_ports(args, env, external_kafka)
    taken = [(port, what) for port, what in ports if port_open("127.0.0.1", port)]
    if taken:
        for port, what in taken:
            print(f"port {port} is taken ({what}): stop what listens there, or move it", file=sys.stderr)
        return 2
    if not external_kafka:
        procs.append(start_broker(args.kafka_port, DEV_DIR / "logs" / "broker.log"))
        env["MODQ_KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{args.kafka_port}"
    if "MODQ_DATABASE_URL" not in env:
        # The embedded broker keeps nothing on disk, so the dev database starts afresh with it.
        db = DEV_DIR / "modq.db"
        db.unlink(missing_ok=True)
        env["MODQ_DATABASE_URL"] = f"sqlite+aiosqlite:///{db.resolve()}"
    api = f"http://127.0.0.1:{args.api_port}"
    env.setdefault("MODQ_PUBLIC_API_URL", api)
    env.setdefault("MODQ_PARTITIONS", "4")
    # The simulator's pairs run at the SLA rates, so dev monitors start at once from them
    # (production default: baselines learned per pair, ARL0 from the fleet false-alert budget).
    env.setdefault("MODQ_BASELINE_MODE", "sla")
    env.setdefault("MODQ_ARL0", "100000")
    env.setdefault("MODQ_BASELINE_OVER_ENFORCEMENT_RATE", "0.02")
    env.setdefault("MODQ_BASELINE_UNDER_ENFORCEMENT_RATE", "0.02")
    interrupted = False
    try:
        if subprocess.call([sys.executable, "-m", "services.cli", "migrate"], env=env, stdout=subprocess.DEVNULL) != 0:
            print("migrations failed; see the output above", file=sys.stderr)
            return 1
        procs.append(_spawn("ingest", ["ingest", "--port", str(args.ingest_port)], env))
        procs.append(_spawn("scorer", ["scorer"], env))
        procs.append(_spawn("api", ["api", "--port", str(args.api_port)], env))
        procs.append(_spawn("notifier", ["notifier"], env))
        key, publisher = (
            subprocess.run(
                [sys.executable, "-m", "services.cli", "keys", "create", "--name", f"dev-{role}", "--role", role],
                env=env,
                capture_output=True,
                text=True,
            )
            .stdout.rsplit(": ", 1)[-1]
            .strip()
            for role in ("operator", "publisher")
        )
        wait_for_port("127.0.0.1", args.api_port, 60)
        sim = ["simulate", "--rate", str(args.rate), "--drift", args.drift, "--reviewer-drift", args.reviewer_drift]
        procs.append(_spawn("simulate", sim, env))
        print(f"modq is running (logs in {DEV_DIR / 'logs'}):")
        print(f"  console   {api}/ui   (sign in with the operator key below to act on alerts)")
        print(f"  API       {api}/docs   rates {api}/v1/rates?window=1h   alerts {api}/v1/alerts")
        scorer_web = f"http://127.0.0.1:{env.get('MODQ_SCORER_WEB_PORT', '6066')}"
        print(f"  metrics   {api}/metrics  http://127.0.0.1:{args.ingest_port}/metrics  {scorer_web}/metrics")
        print(f"  ingest    POST http://127.0.0.1:{args.ingest_port}/v1/events/{{decisions,verdicts,appeals}}")
        print(f"  kafka     {env['MODQ_KAFKA_BOOTSTRAP_SERVERS']}   drift injected: {args.drift}")
        print(f"  QA of QA  {api}/v1/agreement  {api}/v1/reviewers  {api}/v1/sampling-plan?budget=2000")
        print(f"            reviewer drift injected: {args.reviewer_drift}")
        print(f"  operator key (ack, silence, resolve): Authorization: Bearer {key}")
        print(f"  publisher key (ingest HTTP):           Authorization: Bearer {publisher}")
        print("  notifier  no receivers set; MODQ_ALERTMANAGER_URL, MODQ_SLACK_WEBHOOK_URL, ... turn them on")
        print("Ctrl-C stops everything.")
        return _watch(api, procs, args)
    except KeyboardInterrupt:
        interrupted = True
        return 0
    finally:
        if interrupted:
            print("\nstopping...")
        _stop(list(reversed(procs)))


def _print_evidence(client: httpx.Client, alert_id: str) -> None:
    """Where the excess sits and how many decisions it hurt, as the API computes it now."""
    try:
        detail = client.get(f"/v1/alerts/{alert_id}").json()
    except (httpx.HTTPError, ValueError):
        return
    for item in (detail.get("attribution") or [])[:3]:
        print(f"         {item['share']:.0%} of the excess in {item['dimension']} {item['value']}")  # (capped at 100%)
    if detail.get("impact"):
        i = detail["impact"]
        print(
            f"         ~{i['estimated_wrong']} of {i['decisions']} decisions since onset wrong"
            f" ({i['ci_low']}-{i['ci_high']}), {i['excess_wrong']} beyond baseline;"
            f" findings {detail['links'].get('findings')}"
        )


def _watch(api: str, procs: list[subprocess.Popen[bytes]], args: argparse.Namespace) -> int:
    """Print alerts as they appear; stop early on request."""
    seen: set[str] = set()
    start = time.monotonic()
    with httpx.Client(base_url=api, timeout=5) as client:
        while True:
            for p in procs:
                if p.poll() is not None:
                    name = LOG_NAMES.get(p.pid, "broker")
                    log = DEV_DIR / "logs" / f"{name}.log"
                    tail = log.read_text(errors="replace").splitlines()[-12:] if log.exists() else []
                    print(f"{name} exited with code {p.returncode}; the end of {log}:", file=sys.stderr)
                    print("\n".join("  " + line for line in tail), file=sys.stderr)
                    return 1
            try:
                items = client.get("/v1/alerts").json()["items"]
            except (httpx.HTTPError, KeyError, ValueError):
                items = []
            for alert in items:
                key = f"{alert['alert_id']}:{alert['status']}"
                if key not in seen:
                    seen.add(key)
                    linked = (
                        f" (linked under {alert['parent_alert_id']}, not paged)" if alert.get("parent_alert_id") else ""
                    )
                    when, scope = int(time.monotonic() - start), alert.get("scope", "pair")
                    print(f"[{when:4d}s] ALERT {alert['status'].upper()} [{scope}]{linked}: {alert['summary']}")
                    if alert["status"] == "firing":
                        _print_evidence(client, alert["alert_id"])
            if args.exit_after_alert and items:
                return 0
            if args.timeout and time.monotonic() - start > args.timeout:
                print("timed out waiting", file=sys.stderr)
                return 1
            time.sleep(2)
