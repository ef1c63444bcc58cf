"""The measuring stick on real parts (broker, PostgreSQL, ingest, scorer, API as processes): QA, calibration,
audit and golden verdicts through ingest, from two Kafka clients, in the platform's own label spelling.

- the error rates count the primary (QA) verdicts only: exact against the truth, whatever the other tiers say;
- agreement per pair and overall equals the coefficients the test computes itself from the ratings it sent;
- each reviewer's audited, golden and tendency figures equal the truth; a reviewer who drifts from the
  auditors raises a ``reviewer`` alert naming them;
- the weighted (Hajek) rate of a stratified sample and its design-based interval equal the test's own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.support import factories
from tests.support.kafkautil import librdkafka_produce, produce
from tests.support.pipeline_util import api_ready
from tests.support.processes import Service, eventually, free_port
from tests.support.reference import design_ratio
from tests.support.scorerutil import scorer_metric

pytestmark = pytest.mark.integration

PAIRS = [("ip.trademark/counterfeit", "V|01"), ("Hassrede (DE) §130", "V02")]
CATEGORIES = ("NONE", "OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL", "WRONG_ACTION")
REVIEWERS = [f"qa-{i}" for i in range(6)]
DRIFTING = "qa-5"


class Truth:
    """Decisions with several tiers of verdicts, and what every figure should be."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.rng = env, random.Random(20)
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.items: dict[tuple[str, str], list[list[int]]] = {p: [] for p in PAIRS}  # per pair: r_ik per item
        self.primary: dict[tuple[str, str], list[tuple[float, bool]]] = {p: [] for p in PAIRS}  # (pi, error)
        self.audited: dict[str, list[bool]] = {}  # reviewer -> agreed with the auditor, per audited rating
        self.golden: dict[str, list[bool]] = {}  # reviewer -> right, per golden rating
        self.events = 0

    def _send(self, topic: str, key: str, doc: dict[str, object]) -> None:
        self.records.append((self.env[topic], key.encode(), orjson.dumps(doc)))
        self.events += 1

    def _call(self, reviewer: str, truth: str, t: float) -> str:
        if reviewer == DRIFTING and t >= 3_000:  # from then on, this reviewer invents errors half the time
            return "OVER_ENFORCEMENT" if truth == "NONE" and self.rng.random() < 0.5 else truth
        return truth

    def verdict(self, did: str, vid: str, reviewer: str, call: str, tier: str, t: float, pi: float | None) -> None:
        doc = factories.verdict(
            did,
            verdict_id=vid,
            event_id=f"e-{vid}",
            reviewer_id=reviewer,
            qa_tier=tier,
            verdict="CORRECT" if call == "NONE" else "INCORRECT",
            error_type=call,
            event_time=factories.ts(t),
        )
        if pi is not None:
            doc["inclusion_probability"] = pi
        self._send("MODQ_TOPIC_VERDICTS", did, doc)

    def build(self, decisions: int) -> None:
        for n in range(decisions):
            label, vendor = PAIRS[n % 2]
            did, t = f"d{n}", n * 3.0
            approve = n % 3 == 0
            golden = n % 25 == 7
            wrong = self.rng.random() < (0.5 if golden else 0.02 if approve else 0.08)
            truth = ("UNDER_ENFORCEMENT" if approve else "OVER_ENFORCEMENT") if wrong else "NONE"
            action = "APPROVE" if approve else "REMOVE"
            d = factories.decision(did, policy_label=label, vendor_id=vendor, action=action, event_time=factories.ts(t))
            if golden:
                d["golden_answer"] = truth
            self._send("MODQ_TOPIC_DECISIONS", did, d)
            if golden:  # two reviewers answer the golden item
                raters = self.rng.sample(REVIEWERS, 2)
                calls = [self._call(r, truth, t) for r in raters]
                for k, (r, call) in enumerate(zip(raters, calls, strict=True)):
                    self.verdict(did, f"g{k}-{did}", r, call, "GOLDEN", t + 5 + k, None)
                    self.golden.setdefault(r, []).append(call == truth)
                self.items[(label, vendor)].append([sum(c == cat for c in calls) for cat in CATEGORIES])
                continue
            pi = 0.08 if approve else 0.9  # a stratified sample: approvals judged much less
            if self.rng.random() >= pi:
                continue
            reviewer, other = self.rng.sample(REVIEWERS, 2)
            call = self._call(reviewer, truth, t)
            self.verdict(did, f"q-{did}", reviewer, call, "QA", t + 10, pi)
            self.primary[(label, vendor)].append((pi, call != "NONE"))
            ratings = [call]
            if n % 4 == 1:  # a blind calibration by another reviewer
                again = self._call(other, truth, t)
                self.verdict(did, f"c-{did}", other, again, "CALIBRATION", t + 20, None)
                ratings.append(again)
            if n % 3 == 2:  # an audit: the reference
                self.verdict(did, f"a-{did}", "lead-1", truth, "AUDIT", t + 30, None)
                ratings.append(truth)
                self.audited.setdefault(reviewer, []).append(call == truth)
                if n % 4 == 1:
                    self.audited.setdefault(other, []).append(ratings[1] == truth)
            if len(ratings) >= 2:
                self.items[(label, vendor)].append([sum(c == cat for c in ratings) for cat in CATEGORIES])


def coefficients(items: list[list[int]], q: int = 5) -> dict[str, float]:
    """Percent agreement, Fleiss' kappa, Gwet's AC1 and Krippendorff's alpha, from DOMAIN.md's formulas
    (every item here has two ratings or more)."""
    n = len(items)
    r = [sum(c) for c in items]
    pa = sum(sum(x * (x - 1) for x in c) / (ri * (ri - 1)) for c, ri in zip(items, r, strict=True)) / n
    pi = [sum(c[k] / ri for c, ri in zip(items, r, strict=True)) / n for k in range(q)]
    fleiss_pe = sum(p * p for p in pi)
    ac1_pe = sum(p * (1 - p) for p in pi) / (q - 1)
    # Krippendorff: the coincidence matrix, o_kk = sum_i r_ik (r_ik - 1) / (r_i - 1), n_k = sum_i r_ik.
    total = sum(r)
    o_diag = sum(sum(x * (x - 1) for x in c) / (ri - 1) for c, ri in zip(items, r, strict=True))
    n_k = [sum(c[k] for c in items) for k in range(q)]
    d_o = 1 - o_diag / total
    d_e = 1 - sum(x * (x - 1) for x in n_k) / (total * (total - 1))
    return {
        "percent_agreement": pa,
        "fleiss_kappa": (pa - fleiss_pe) / (1 - fleiss_pe),
        "gwet_ac1": (pa - ac1_pe) / (1 - ac1_pe),
        "krippendorff_alpha": 1 - d_o / d_e,
    }


async def test_tiers_agreement_reviewers_and_weighted_intervals_are_exact(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    api_port = free_port()
    env = {**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_BASELINE_REVIEWER_DISAGREEMENT_RATE": "0.05"}
    spawn(["scorer"], env, "scorer")
    spawn(["ingest", "--port", str(free_port())], env, "ingest")
    spawn(["api", "--port", str(api_port)], env, "api")
    spawn(["notifier", "--port", str(free_port())], env, "notifier")
    truth = Truth(env)
    truth.build(3_000)
    bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
    half = len(truth.records) // 2  # the first half through aiokafka, the rest through librdkafka (lz4)
    await produce(bootstrap, truth.records[:half])
    await librdkafka_produce(bootstrap, "lz4", truth.records[half:])
    port = env["MODQ_SCORER_WEB_PORT"]

    async def scored() -> bool:
        return await scorer_metric(port) >= truth.events

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=20) as client:
        await eventually(lambda: api_ready(client), 60)
        await eventually(scored, 120)
        as_of = factories.ts(3 * 3_000 + 3_600)

        async def rates() -> dict[tuple[str, str], dict[str, Any]]:
            resp = await client.get("/v1/rates", params={"window": "24h", "as_of": as_of})
            return {(i["policy_label"], i["vendor_id"]): i for i in resp.json()["items"]}

        async def counted() -> bool:
            got = await rates()
            want = {p: (len(rows), sum(e for _, e in rows)) for p, rows in truth.primary.items()}
            return {p: (i["verdicts"], i["errors"]) for p, i in got.items()} == want

        await eventually(counted, 60)  # calibration, audit and golden verdicts are not in the rates
        design_mattered = False
        for pair, item in (await rates()).items():
            p, low, high, n_star = design_ratio(truth.primary[pair])
            assert item["weighted_error_rate"] == pytest.approx(p, rel=1e-9)
            assert (item["weighted_ci_low"], item["weighted_ci_high"]) == (pytest.approx(low), pytest.approx(high))
            assert item["effective_verdicts"] == pytest.approx(min(n_star, item["verdicts"]), abs=0.06)
            design_mattered |= n_star < item["verdicts"]  # (wider than the plain interval of as many verdicts)
        assert design_mattered

        # Agreement: the test's own coefficients of the items it sent.
        async def agreement() -> dict[tuple[str | None, str | None], dict[str, Any]]:
            resp = await client.get("/v1/agreement", params={"window": "24h", "as_of": as_of})
            return {(i["policy_label"], i["vendor_id"]): i for i in resp.json()["items"]}

        async def all_items() -> bool:
            got = await agreement()
            return all(got.get(p, {}).get("items") == len(items) for p, items in truth.items.items())

        await eventually(all_items, 60)
        got = await agreement()
        everything = [c for items in truth.items.values() for c in items]
        for key, items in [*truth.items.items(), ((None, None), everything)]:
            row, want = got[key], coefficients(items)
            assert row["ratings"] == sum(sum(c) for c in items)
            for name, value in want.items():
                assert row[name] == pytest.approx(value, abs=1e-9), (key, name)
            assert row["gwet_ac1_ci_low"] <= row["gwet_ac1"] <= row["gwet_ac1_ci_high"]

        # Reviewers against the auditors and the golden answers.
        reviewers = {
            r["reviewer_id"]: r
            for r in (await client.get("/v1/reviewers", params={"window": "24h", "as_of": as_of})).json()["items"]
        }
        for reviewer in REVIEWERS:
            row = reviewers[reviewer]
            audited, golden = truth.audited.get(reviewer, []), truth.golden.get(reviewer, [])
            assert (row["audited"], row["golden"]) == (len(audited), len(golden)), reviewer
            assert row["audit_agreement"] == pytest.approx(sum(audited) / len(audited))
            assert row["golden_accuracy"] == pytest.approx(sum(golden) / len(golden))
        assert reviewers[DRIFTING]["tendency_words"].startswith("calls more errors than the reference")
        assert reviewers["qa-0"]["tendency"] == 0.0

        async def reviewer_alert() -> list[dict[str, Any]]:
            resp = await client.get("/v1/alerts", params={"rule": "reviewer_disagreement"})
            return [a for a in resp.json()["items"] if a["status"] == "firing"]

        fired = await eventually(reviewer_alert, 60)
        assert [(a["scope"], a["reviewer_id"], a["policy_label"]) for a in fired] == [("reviewer", DRIFTING, "*")]
        assert math.isfinite(fired[0]["observed_rate"]) and fired[0]["observed_rate"] > 0.05
