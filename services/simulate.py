"""Realistic synthetic traffic: decisions, QA verdicts (late, out of order, duplicated), appeals.

Every (policy_label, vendor_id) pair has a baseline error rate; a drift spec such as
``vendor=V02,label=SCAMS_AND_FRAUD,to=0.09,at=60`` makes one pair's true error rate jump
``at`` seconds after start. Leave out ``vendor`` for a label-wide drift (every vendor of the
label), ``label`` for a vendor-wide one; add ``market=DE`` to make it market-local (only that
market's decisions). Several drifts are separated by ``;``. Event times are real wall-clock times.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from services.common.config import CommonSettings
from services.common.kafka import ensure_topics, make_producer

log = logging.getLogger("modq.simulate")

LABELS = (  # in platforms' own spellings: modq keeps labels as written
    "SCAMS_AND_FRAUD",
    "ip.trademark/counterfeit",
    "unsafe_products",
    "Hassrede (DE)",
    "consumer-information",
    "minors.safety",
    "violence",
    "animal_welfare",
)
MARKETS = ("DE", "FR", "ES", "IT", "NL", "PL", "SE", "BE")
ACTIONS = ("APPROVE", "APPROVE", "APPROVE", "REMOVE", "REMOVE", "DEMOTE", "LABEL", "SUSPEND_SELLER")
ENTITIES = ("LISTING", "SELLER", "VIDEO", "REVIEW", "AD")
LANGUAGES = {"DE": "de", "FR": "fr", "ES": "es", "IT": "it", "NL": "nl", "PL": "pl", "SE": "sv", "BE": "nl"}


@dataclass(frozen=True)
class Drift:
    vendor_id: str | None  # None: every vendor (a label-wide drift)
    policy_label: str | None  # None: every label (a vendor-wide drift)
    to_rate: float
    at_s: float
    market: str | None = None  # only this market's decisions (a market-local drift)

    @classmethod
    def parse(cls, spec: str) -> Drift:
        """Parse "vendor=V02,label=SCAMS_AND_FRAUD,market=DE,to=0.09,at=60" (vendor, label, market optional)."""
        try:
            parts = dict(item.strip().split("=", 1) for item in spec.split(",") if item.strip())
            unknown = set(parts) - {"vendor", "label", "market", "to", "at"}
            if unknown or not ({"vendor", "label"} & set(parts)):
                raise ValueError(f"unknown or missing keys {sorted(unknown)}")
            return cls(
                parts.get("vendor"),
                parts.get("label"),
                float(parts["to"]),
                float(parts.get("at", "120")),
                parts.get("market"),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"bad drift spec {spec!r}: want [vendor=V,][label=L,][market=M,]to=RATE[,at=SECONDS]"
                " with a vendor, a label or both"
            ) from exc

    @classmethod
    def parse_all(cls, specs: str) -> list[Drift]:
        """Several specs separated by ";"."""
        return [cls.parse(spec) for spec in specs.split(";") if spec.strip()]

    def applies(self, vendor: str, label: str, market: str) -> bool:
        return self.vendor_id in (None, vendor) and self.policy_label in (None, label) and self.market in (None, market)


@dataclass
class SimConfig:
    rate: float = 500.0
    vendors: int = 4
    labels: int = 4
    markets: int = 3
    qa_fraction: float = 0.2
    baseline: float = 0.03
    duplicate_fraction: float = 0.02
    early_verdict_fraction: float = 0.1
    appeal_fraction: float = 0.02
    duration_s: float | None = None
    seed: int = 7
    drifts: tuple[Drift, ...] = ()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TrafficModel:
    """Pure generator of (send_at, topic_kind, event) tuples; no I/O, deterministic per seed."""

    def __init__(self, cfg: SimConfig, start: float) -> None:
        self.cfg = cfg
        self.start = start
        self.rng = random.Random(cfg.seed)
        self.vendors = [f"V{i + 1:02d}" for i in range(cfg.vendors)]
        self.labels = list(LABELS[: cfg.labels])
        self.markets = list(MARKETS[: cfg.markets])
        self.pending: list[tuple[float, int, str, dict[str, object]]] = []
        self._seq = 0

    def error_rate(self, vendor: str, label: str, now: float, market: str = "") -> float:
        for d in self.cfg.drifts:
            if now - self.start >= d.at_s and d.applies(vendor, label, market):
                return d.to_rate
        return self.cfg.baseline

    def _push(self, at: float, kind: str, event: dict[str, object]) -> None:
        self._seq += 1
        heapq.heappush(self.pending, (at, self._seq, kind, event))
        if self.rng.random() < self.cfg.duplicate_fraction:  # redelivery: same event_id
            self._seq += 1
            heapq.heappush(self.pending, (at + self.rng.uniform(0.1, 3), self._seq, kind, event))

    def generate(self, now: float, count: int) -> None:
        r, cfg = self.rng, self.cfg
        for _ in range(count):
            vendor, label = r.choice(self.vendors), r.choice(self.labels)
            decision_id = str(uuid.UUID(int=r.getrandbits(128)))
            action = r.choice(ACTIONS)
            market = r.choice(self.markets)
            actor = r.choice(("HUMAN", "HUMAN", "MODEL", "HUMAN_ON_MODEL_SUGGESTION"))
            decision = {
                "schema_version": 1,
                "event_id": f"d-{decision_id}",
                "event_time": iso(now),
                "decision_id": decision_id,
                "policy_label": label,
                "vendor_id": vendor,
                "market": market,
                "content_language": LANGUAGES.get(market, "en"),
                "action": action,
                "actor_type": actor,
                "entity_type": r.choice(ENTITIES),
                "entity_id": f"e-{r.getrandbits(48):x}",
                "queue_id": f"q-{label.lower()[:8]}-{r.randrange(3)}",
                "policy_version": "2026-10",
            }
            if actor != "HUMAN":
                decision.update(model_id="m-classifier", model_version=r.choice(("1.4", "1.5")))
            early = r.random() < cfg.early_verdict_fraction
            # An early verdict overtakes its decision: the decision is held back for a few seconds.
            self._push(now + (r.uniform(2, 8) if early else 0.0), "decision", decision)
            if r.random() < cfg.qa_fraction:
                is_error = r.random() < self.error_rate(vendor, label, now, market)
                if is_error:
                    error_type = (
                        "UNDER_ENFORCEMENT"
                        if action == "APPROVE"
                        else r.choice(("OVER_ENFORCEMENT", "OVER_ENFORCEMENT", "WRONG_LABEL", "WRONG_ACTION"))
                    )
                else:
                    error_type = "NONE"
                verdict_at = now + (r.uniform(0.5, 1.5) if early else r.uniform(0.5, 5))
                verdict_id = f"v-{decision_id}"
                self._push(
                    verdict_at,
                    "verdict",
                    {
                        "schema_version": 1,
                        "event_id": f"ve-{decision_id}",
                        "event_time": iso(verdict_at),
                        "verdict_id": verdict_id,
                        "decision_id": decision_id,
                        "reviewer_id": f"qa-{r.randrange(40):02d}",
                        "verdict": "INCORRECT" if is_error else "CORRECT",
                        "error_type": error_type,
                        "qa_tier": "QA",
                        "inclusion_probability": cfg.qa_fraction,
                    },
                )
            if action != "APPROVE" and r.random() < cfg.appeal_fraction:
                at = now + r.uniform(1, 10)
                self._push(
                    at,
                    "appeal",
                    {
                        "schema_version": 1,
                        "event_id": f"ae-{decision_id}",
                        "event_time": iso(at),
                        "appeal_id": f"a-{decision_id}",
                        "decision_id": decision_id,
                        "outcome": r.choice(("UPHELD", "UPHELD", "OVERTURNED", "WITHDRAWN")),
                    },
                )

    def due(self, now: float) -> list[tuple[str, dict[str, object]]]:
        out = []
        while self.pending and self.pending[0][0] <= now:
            _, _, kind, event = heapq.heappop(self.pending)
            out.append((kind, event))
        return out


async def run_simulator(settings: CommonSettings, cfg: SimConfig) -> int:
    """Publish traffic until duration elapses (or forever); returns the number of records sent."""
    topics = {
        "decision": settings.topic_decisions,
        "verdict": settings.topic_verdicts,
        "appeal": settings.topic_appeals,
    }
    await ensure_topics(settings, {t: settings.partitions for t in topics.values()})
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    start = time.time()
    model = TrafficModel(cfg, start)
    sent, carry, tick = 0, 0.0, 0.1
    log.info("simulating", extra={"rate": cfg.rate, "drifts": [str(d) for d in cfg.drifts]})
    try:
        while cfg.duration_s is None or time.time() - start < cfg.duration_s:
            now = time.time()
            carry += cfg.rate * tick
            model.generate(now, int(carry))
            carry -= int(carry)
            for kind, event in model.due(now):
                key = str(event["decision_id"]).encode()
                await producer.send(topics[kind], orjson.dumps(event), key=key)
                sent += 1
            await asyncio.sleep(max(0.0, tick - (time.time() - now)))
        await producer.flush()
    finally:
        await producer.stop()
    return sent
