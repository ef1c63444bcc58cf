"""Helpers for whole-pipeline tests: traffic with ground truth, API readers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import TypeVar

import httpx
import orjson

from services.common.config import IngestSettings
from tests.support import factories

S = TypeVar("S")

ERROR_TYPES = ("OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL")
DRIFT = ("SCAMS_AND_FRAUD", "V01", "DE")
STABLE = ("VIOLENCE", "V02", "FR")
AS_OF = factories.ts(6 * 3600)


class Traffic:
    """Builds upstream records and keeps the ground truth of what should be counted."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.rng = random.Random(42)
        self.truth: dict[tuple[str, str], dict[str, int]] = {}
        self.n = 0

    def phase(
        self, pair: tuple[str, str, str], count: int, error_every: int, t0: float
    ) -> list[tuple[str, bytes | None, bytes]]:
        label, vendor, market = pair
        out: list[tuple[str, bytes | None, bytes]] = []
        t = self.truth.setdefault((label, vendor), {"decisions": 0, "verdicts": 0, "errors": 0, "appeals": 0})
        for i in range(count):
            self.n += 1
            did = f"{vendor}-{self.n}"
            error = error_every > 0 and i % error_every == 0
            d = factories.decision(
                did, policy_label=label, vendor_id=vendor, market=market, event_time=factories.ts(t0 + i)
            )
            v = factories.verdict(did, error=error, event_time=factories.ts(t0 + i + 30))
            if error:
                v["error_type"] = ERROR_TYPES[self.n % len(ERROR_TYPES)]
            recs = [
                (self.env["MODQ_TOPIC_DECISIONS"], did.encode(), orjson.dumps(d)),
                (self.env["MODQ_TOPIC_VERDICTS"], did.encode(), orjson.dumps(v)),
            ]
            if i % 10 == 0:
                recs.reverse()  # the verdict precedes its decision
            if i % 17 == 0:
                recs.append(recs[0])  # redelivery
            if i % 25 == 0:
                recs.append(
                    (
                        self.env["MODQ_TOPIC_APPEALS"],
                        did.encode(),
                        orjson.dumps(factories.appeal(did, event_time=factories.ts(t0 + i + 60))),
                    )
                )
                t["appeals"] += 1
            if i % 40 == 0:
                recs.append((self.env["MODQ_TOPIC_VERDICTS"], b"bad", orjson.dumps({**v, "verdict": "MAYBE"})))
            out.extend(recs)
            t["decisions"] += 1
            t["verdicts"] += 1
            t["errors"] += error
        return out


async def rates(client: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, int]]:
    resp = await client.get("/v1/rates", params={"window": "24h", "as_of": AS_OF})
    resp.raise_for_status()
    return {
        (i["policy_label"], i["vendor_id"]): {
            "decisions": i["decisions"],
            "verdicts": i["verdicts"],
            "errors": i["errors"],
            "appeals": i["appeals"],
        }
        for i in resp.json()["items"]
    }


async def alerts(client: httpx.AsyncClient, **params: str) -> list[dict[str, object]]:
    resp = await client.get("/v1/alerts", params=params)
    resp.raise_for_status()
    return list(resp.json()["items"])


class Mismatch(dict):  # type: ignore[type-arg]
    """Falsy result of a comparison that still shows both sides when a wait gives up."""

    def __bool__(self) -> bool:
        return False


async def matches(client: httpx.AsyncClient, traffic: Traffic) -> bool | Mismatch:
    got = await rates(client)
    return True if got == traffic.truth else Mismatch(got=got, want=traffic.truth)


async def api_ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


def make_key(env: dict[str, str], name: str, role: str) -> str:
    """An API key made the way an admin makes one: with the CLI."""
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "keys", "create", "--name", name, "--role", role],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.rsplit(": ", 1)[1].strip()


def settings_from(service_env: dict[str, str], kind: type[S]) -> S:
    """A service's settings from a test's environment (for a part run in the test's own process)."""
    env = {k: v for k, v in service_env.items() if k.startswith("MODQ_")}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return kind()
    finally:
        os.environ.clear()
        os.environ.update(old)


def ingest_settings(service_env: dict[str, str]) -> IngestSettings:
    return settings_from(service_env, IngestSettings)
