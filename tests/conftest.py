"""Fixtures that start real parts once per session: the Kafka-protocol broker and PostgreSQL databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.devtools.broker import start_broker
from tests.support.processes import Daemons, Service, free_port, stop_all

PG_ADMIN_DSN = os.environ.get("MODQ_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker on a free loopback port for the whole session (or MODQ_TEST_KAFKA)."""
    if external := os.environ.get("MODQ_TEST_KAFKA"):
        yield external
        return
    port = free_port()
    proc = start_broker(port, tmp_path_factory.mktemp("broker") / "broker.log")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"modq_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def names() -> dict[str, str]:
    """Topic names, app id and group id of one test, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:10]
    return {
        "MODQ_TOPIC_DECISIONS": f"{tag}.decisions",
        "MODQ_TOPIC_VERDICTS": f"{tag}.verdicts",
        "MODQ_TOPIC_APPEALS": f"{tag}.appeals",
        "MODQ_TOPIC_ALERTS": f"{tag}.alerts",
        "MODQ_TOPIC_DEADLETTER": f"{tag}.deadletter",
        "MODQ_TOPIC_EVENTS": f"{tag}.events",
        "MODQ_TOPIC_OUTCOMES": f"{tag}.outcomes",
        "MODQ_TOPIC_ALERT_ACTIONS": f"{tag}.alert-actions",
        "MODQ_TOPIC_REMEDIATIONS": f"{tag}.remediations",
        "MODQ_NOTIFIER_GROUP_ID": f"notifier-{tag}",
        "MODQ_SCORER_APP_ID": f"scorer-{tag}",
        "MODQ_INGEST_GROUP_ID": f"ingest-{tag}",
    }


@pytest.fixture
def service_env(kafka_bootstrap: str, names: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODQ_")}
    env.update(names)
    env.update(
        {
            "MODQ_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MODQ_PARTITIONS": "2",
            "MODQ_SCORER_WEB_PORT": str(free_port()),
            "MODQ_FAUST_SESSION_TIMEOUT_S": "10",
            "MODQ_FAUST_REBALANCE_TIMEOUT_S": "10",
            "MODQ_FLUSH_INTERVAL_S": "0.5",
            "MODQ_BASELINE_MODE": "sla",
            "MODQ_ARL0": "100000",
            "MODQ_BASELINE_OVER_ENFORCEMENT_RATE": "0.02",
            "MODQ_BASELINE_UNDER_ENFORCEMENT_RATE": "0.02",
            "MODQ_LOG_LEVEL": "INFO",
            "MODQ_FRAMEWORK_LOG_LEVEL": "INFO",
        }
    )
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    started: list[Service] = []

    def _spawn(args: list[str], env: dict[str, str], name: str) -> Service:
        svc = Service(args, env, tmp_path / f"{name}.log").start()
        started.append(svc)
        return svc

    yield _spawn
    stop_all(started)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[object]:
    """Starts a real Alertmanager (Debian's) routing to a webhook at hook_port."""
    from tests.support.receivers import start_alertmanager

    daemons = Daemons()
    yield lambda port, hook_port: daemons.add(start_alertmanager(tmp_path / f"am-{port}", port, hook_port))
    daemons.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[object]:
    """Starts a real Prometheus scraping the given {job: host:port} targets, with modq's rules."""
    from tests.support.observability import start_prometheus

    daemons = Daemons()
    yield lambda port, targets: daemons.add(start_prometheus(tmp_path / f"prom-{port}", port, targets))
    daemons.stop()
