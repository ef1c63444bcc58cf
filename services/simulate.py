"""Realistic synthetic traffic: decisions, QA verdicts (late, out of order, duplicated), appeals.

Every (policy_label, vendor_id) pair has a baseline error rate; a drift spec such as
``vendor=V02,label=SCAMS_AND_FRAUD,to=0.09,at=60`` makes one pair's true error rate jump
``at`` seconds after start. Leave out ``vendor`` for a label-wide drift (every vendor of the
label), ``label`` for a vendor-wide one; add ``market=DE`` to make it market-local (only that
market's decisions). Several drifts are separated by ``;``. Event times are real wall-clock times.

QA is a stratified sample (approvals at half the rate of enforcements, each verdict with its
inclusion probability) by 40 reviewers whose calls are the truth flipped 0.5% of the time; a tenth
of the judged decisions are reviewed again blind (CALIBRATION), a twentieth audited by a lead (AUDIT,
the truth), and golden items (1% of decisions, half of them wrong, with a known answer) are rated by
two reviewers (GOLDEN). A reviewer drift ``reviewer=qa-07,misses=0.8,at=60`` makes that reviewer miss
80% of the real errors from 60 s on (``invents=0.1``: call an error on 10% of correct decisions).
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
CATEGORIES = {  # the DSA statement-of-reasons category each simulated label falls under
    "SCAMS_AND_FRAUD": "STATEMENT_CATEGORY_SCAMS_AND_FRAUD",
    "ip.trademark/counterfeit": "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "unsafe_products": "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS",
    "Hassrede (DE)": "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH",
    "consumer-information": "STATEMENT_CATEGORY_CONSUMER_INFORMATION",
    "minors.safety": "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
    "violence": "STATEMENT_CATEGORY_VIOLENCE",
    "animal_welfare": "STATEMENT_CATEGORY_ANIMAL_WELFARE",
}
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


@dataclass(frozen=True)
class ReviewerDrift:
    """A QA reviewer who goes wrong from ``at_s`` seconds after start: they miss a share ``misses`` of
    the real errors (call them correct) and invent errors on a share ``invents`` of the correct
    decisions."""

    reviewer_id: str
    misses: float
    invents: float
    at_s: float

    @classmethod
    def parse(cls, spec: str) -> ReviewerDrift:
        """Parse "reviewer=qa-07,misses=0.8,invents=0.05,at=60" (misses and invents default to 0)."""
        try:
            parts = dict(item.strip().split("=", 1) for item in spec.split(",") if item.strip())
            if set(parts) - {"reviewer", "misses", "invents", "at"} or "reviewer" not in parts:
                raise ValueError("unknown or missing keys")
            return cls(
                parts["reviewer"],
                float(parts.get("misses", "0")),
                float(parts.get("invents", "0")),
                float(parts.get("at", "60")),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"bad reviewer drift {spec!r}: want reviewer=ID[,misses=SHARE][,invents=SHARE][,at=SECONDS]"
            ) from exc


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
    reviewers: int = 40
    reviewer_noise: float = 0.005  # a QA reviewer's calls are flipped this often
    calibration_fraction: float = 0.1  # of QA-judged decisions, reviewed again blind by another reviewer
    audit_fraction: float = 0.05  # of QA-judged decisions, audited by a lead (the reference: the truth)
    golden_fraction: float = 0.01  # of decisions, golden items (a known answer) rated by two reviewers
    golden_error_share: float = 0.5  # golden sets are curated: half of their items are wrong decisions
    reviewer_drift: ReviewerDrift | None = None


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
        self.reviewer_ids = [f"qa-{i:02d}" for i in range(max(cfg.reviewers, 2))]

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
            decision["category"] = CATEGORIES.get(label, "STATEMENT_CATEGORY_OTHER_VIOLATION_TC")
            decision["automated_detection"] = actor != "HUMAN"
            decision["automated_decision"] = {"MODEL": "FULLY", "HUMAN_ON_MODEL_SUGGESTION": "PARTIALLY"}.get(
                actor, "NOT_AUTOMATED"
            )
            early = r.random() < cfg.early_verdict_fraction
            golden = r.random() < cfg.golden_fraction
            wrong = r.random() < (cfg.golden_error_share if golden else self.error_rate(vendor, label, now, market))
            truth = self._truth(action, wrong)
            if golden:
                decision["golden_answer"] = truth
            # An early verdict overtakes its decision: the decision is held back for a few seconds.
            self._push(now + (r.uniform(2, 8) if early else 0.0), "decision", decision)
            # A stratified QA sample: approvals judged at half the rate of enforcements.
            inclusion = cfg.qa_fraction * (0.5 if action == "APPROVE" else 1.0)
            if golden:
                for n, reviewer in enumerate(r.sample(self.reviewer_ids, 2)):
                    call = self._call(reviewer, truth, action, now)
                    self._verdict(decision_id, f"g{n}", now + r.uniform(1, 5), reviewer, call, "GOLDEN")
            elif r.random() < inclusion:
                reviewer, other = r.sample(self.reviewer_ids, 2)
                verdict_at = now + (r.uniform(0.5, 1.5) if early else r.uniform(0.5, 5))
                call = self._call(reviewer, truth, action, now)
                self._verdict(decision_id, "", verdict_at, reviewer, call, "QA", inclusion)
                if r.random() < cfg.calibration_fraction:  # another blind review
                    again = self._call(other, truth, action, now)
                    self._verdict(decision_id, "c", verdict_at + r.uniform(1, 5), other, again, "CALIBRATION")
                if r.random() < cfg.audit_fraction:  # a lead's audit: the reference
                    lead = f"lead-{r.randrange(3)}"
                    self._verdict(decision_id, "a", verdict_at + r.uniform(2, 8), lead, truth, "AUDIT")
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
                        "filed_at": iso(now + r.uniform(0.2, 0.8)),
                        "resolved_at": iso(at),
                        "channel": r.choice(("ARTICLE_20", "ARTICLE_20", "ARTICLE_20", "ARTICLE_21")),
                    },
                )

    def _truth(self, action: str, wrong: bool) -> str:
        """The decision's true error type (NONE when it was right)."""
        if not wrong:
            return "NONE"
        if action == "APPROVE":
            return "UNDER_ENFORCEMENT"
        return self.rng.choice(("OVER_ENFORCEMENT", "OVER_ENFORCEMENT", "WRONG_LABEL", "WRONG_ACTION"))

    def _call(self, reviewer: str, truth: str, action: str, now: float) -> str:
        """What a reviewer calls: the truth, flipped with the reviewer's noise (or, for a drifting
        reviewer from its start, missing and inventing errors at its rates)."""
        drift = self.cfg.reviewer_drift
        miss = invent = self.cfg.reviewer_noise
        if drift is not None and reviewer == drift.reviewer_id and now - self.start >= drift.at_s:
            miss, invent = drift.misses, drift.invents
        if truth != "NONE":
            return "NONE" if self.rng.random() < miss else truth
        if self.rng.random() < invent:
            return "UNDER_ENFORCEMENT" if action == "APPROVE" else "OVER_ENFORCEMENT"
        return truth

    def _verdict(
        self,
        decision_id: str,
        suffix: str,
        at: float,
        reviewer: str,
        call: str,
        tier: str,
        inclusion: float | None = None,
    ) -> None:
        doc: dict[str, object] = {
            "schema_version": 1,
            "event_id": f"ve{suffix}-{decision_id}",
            "event_time": iso(at),
            "verdict_id": f"v{suffix}-{decision_id}",
            "decision_id": decision_id,
            "reviewer_id": reviewer,
            "verdict": "CORRECT" if call == "NONE" else "INCORRECT",
            "error_type": call,
            "qa_tier": tier,
        }
        if inclusion is not None:
            doc["inclusion_probability"] = inclusion
        self._push(at, "verdict", doc)

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
