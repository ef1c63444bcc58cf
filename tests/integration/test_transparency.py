"""The DSA transparency report on real parts: decisions by models, by humans on a model's suggestion
and by vendors' agents, a stratified QA sample and appeals through ingest and the scorer into
PostgreSQL; then, with the scorer and ingest stopped (a closed period is reported from the database
alone), every figure of ``/v1/reports/transparency`` against a truth the test computes itself, event by
event (exact counts; intervals from the reference formulas), its CSV parsed with Python's csv module,
and ``modq report transparency`` writing the same files.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from services.common.reports import SECTIONS
from services.domain.rates import wilson_interval
from tests.support import factories
from tests.support.kafkautil import produce
from tests.support.pipeline_util import api_ready
from tests.support.processes import Service, eventually, free_port
from tests.support.reference import design_ratio
from tests.support.scorerutil import scorer_metric

pytestmark = pytest.mark.integration

PERIOD = (0.0, 2 * 86_400.0)  # seconds after factories.BASE: [from, to)
LABELS = {"ip.trademark/counterfeit": "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS", "unsafe": ""}
VENDORS = ["V|01", "V02"]
MODELS = [("MODEL", "m-1", "1.0"), ("MODEL", "m-1", "2.0"), ("HUMAN_ON_MODEL_SUGGESTION", "m-1", "2.0")]
LANGUAGES = ["de", "fr", "Deutsch (AT)"]
APPEAL_KEYS = ("policy_label", "category", "channel", "vendor_id")
OUTCOMES = ("UPHELD", "OVERTURNED", "PARTIALLY_OVERTURNED", "WITHDRAWN")
ACCURACY_KEYS = ("actor_type", "model_id", "model_version", "content_language", "vendor_id")


class Truth:
    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.rng = env, random.Random(21)
        self.decisions: list[dict[str, Any]] = []  # what each decision is, with its time
        self.verdicts: list[dict[str, Any]] = []  # (the decision's attributes, pi, correct, time)
        self.appeals: list[dict[str, Any]] = []
        self.records: dict[str, list[tuple[str, bytes | None, bytes]]] = {"d": [], "v": [], "a": []}
        self.events = 0

    def build(self, n: int) -> None:
        step = (PERIOD[1] + 4 * 3_600) / n  # from an hour before the period to three hours after it
        for i in range(n):
            t = -3_600 + i * step
            label, vendor = self.rng.choice(list(LABELS)), self.rng.choice(VENDORS)
            kind = self.rng.random()
            actor, model_id, version = self.rng.choice(MODELS) if kind < 0.6 else ("HUMAN", "", "")
            language = self.rng.choice(LANGUAGES) if actor != "HUMAN" or kind > 0.9 else ""
            action = "APPROVE" if self.rng.random() < 0.5 else "REMOVE"
            did = f"d{i}"
            doc = factories.decision(
                did, policy_label=label, vendor_id=vendor, action=action, actor_type=actor, event_time=factories.ts(t)
            )
            if model_id:
                doc.update(model_id=model_id, model_version=version)
            if language:
                doc["content_language"] = language
            if LABELS[label]:
                doc["category"] = LABELS[label]
            facts = {
                "t": t,
                "actor_type": actor,
                "model_id": model_id,
                "model_version": version,
                "content_language": language,
                "vendor_id": vendor,
                "enforcement": action != "APPROVE",
                "policy_label": label,
                "category": LABELS[label],
            }
            self.decisions.append(facts)
            self.records["d"].append((self.env["MODQ_TOPIC_DECISIONS"], did.encode(), orjson.dumps(doc)))
            # A stratified QA sample (humans' verdicts carry no probability: weight 1).
            pi = None if actor == "HUMAN" else (0.6 if action != "APPROVE" else 0.2)
            if self.rng.random() < (pi or 0.4):
                wrong = self.rng.random() < (0.12 if action != "APPROVE" else 0.04)
                error = ("OVER_ENFORCEMENT" if action != "APPROVE" else "UNDER_ENFORCEMENT") if wrong else "NONE"
                tv = t + 600
                v = factories.verdict(did, error=wrong, error_type=error, event_time=factories.ts(tv))
                if pi is not None:
                    v["inclusion_probability"] = pi
                self.verdicts.append({**facts, "pi": pi or 1.0, "correct": not wrong, "t": tv})
                self.records["v"].append((self.env["MODQ_TOPIC_VERDICTS"], did.encode(), orjson.dumps(v)))
            if action != "APPROVE" and self.rng.random() < 0.3:
                filed = t + 300
                resolved = filed + self.rng.randint(60, 30_000)
                outcome = self.rng.choice(("UPHELD", "UPHELD", "OVERTURNED", "PARTIALLY_OVERTURNED", "WITHDRAWN"))
                channel = self.rng.choice(("ARTICLE_20", "ARTICLE_20", "ARTICLE_21"))
                a = factories.appeal(
                    did,
                    outcome=outcome,
                    filed_at=factories.ts(filed),
                    resolved_at=factories.ts(resolved),
                    channel=channel,
                    event_time=factories.ts(t + 900),
                )
                self.appeals.append(
                    {**facts, "t": filed, "outcome": outcome, "channel": channel, "s": resolved - filed}
                )
                self.records["a"].append((self.env["MODQ_TOPIC_APPEALS"], did.encode(), orjson.dumps(a)))
        self.events = sum(len(r) for r in self.records.values())

    # -- the report, computed here ---------------------------------------------------------

    @staticmethod
    def _in(t: float) -> bool:
        return PERIOD[0] <= t < PERIOD[1]

    def appeal_rows(self) -> dict[tuple[Any, ...], dict[str, Any]]:
        out = {}
        for by in ((), ("policy_label",), ("category",), ("channel",), ("vendor_id",), ("policy_label", "vendor_id")):
            groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
            for a in self.appeals:
                if self._in(a["t"]) and not (by == ("category",) and not a["category"]):
                    groups.setdefault(tuple(a[k] if k in by else None for k in APPEAL_KEYS), []).append(a)
            for key, rows in groups.items():
                count = {
                    o: sum(r["outcome"] == o for r in rows)
                    for o in ("UPHELD", "OVERTURNED", "PARTIALLY_OVERTURNED", "WITHDRAWN")
                }
                reversed_ = count["OVERTURNED"] + count["PARTIALLY_OVERTURNED"]
                decided = len(rows) - count["WITHDRAWN"]
                low, high = wilson_interval(reversed_, decided)
                times = [r["s"] for r in rows]
                out[key] = {
                    "complaints": len(rows),
                    "upheld": count["UPHELD"],
                    "overturned": count["OVERTURNED"],
                    "partially_overturned": count["PARTIALLY_OVERTURNED"],
                    "withdrawn": count["WITHDRAWN"],
                    "reversed": reversed_,
                    "median_decision_time_s": float(np.median(times)),
                    "p90_decision_time_s": float(np.percentile(times, 90)),
                    "overturn_rate": reversed_ / decided,
                    "overturn_rate_ci_low": low,
                    "overturn_rate_ci_high": high,
                }
        return out

    def accuracy_rows(self, human: bool) -> dict[tuple[Any, ...], dict[str, Any]]:
        breakdowns: Iterable[tuple[str, ...]] = (
            ((), ("vendor_id",), ("content_language",))
            if human
            else (
                (),
                ("actor_type",),
                ("actor_type", "model_id", "model_version"),
                ("actor_type", "content_language"),
                ("actor_type", "model_id", "model_version", "content_language"),
            )
        )

        def mine(row: dict[str, Any]) -> bool:
            return (row["actor_type"] == "HUMAN") == human

        out = {}
        for by in breakdowns:
            keys: set[tuple[Any, ...]] = set()
            for d in self.decisions:
                if mine(d) and self._in(d["t"]) and all(d[k] for k in by):  # (no language: in the totals only)
                    keys.add(tuple(d[k] if k in by else None for k in ACCURACY_KEYS))
            for key in keys:

                def match(row: dict[str, Any], key: tuple[Any, ...] = key) -> bool:
                    return mine(row) and all(v is None or row[k] == v for k, v in zip(ACCURACY_KEYS, key, strict=True))

                judged = [v for v in self.verdicts if match(v) and self._in(v["t"])]
                tp = [(v["pi"], True) for v in judged if v["enforcement"] and v["correct"]]
                fp = [(v["pi"], True) for v in judged if v["enforcement"] and not v["correct"]]
                tn = [(v["pi"], True) for v in judged if not v["enforcement"] and v["correct"]]
                fn = [(v["pi"], True) for v in judged if not v["enforcement"] and not v["correct"]]

                def no(rows: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
                    return [(pi, False) for pi, _ in rows]

                row: dict[str, Any] = {
                    "decisions": sum(1 for d in self.decisions if match(d) and self._in(d["t"])),
                    "verdicts": len(judged),
                }
                for name, rows in (
                    ("accuracy", tp + tn + no(fp + fn)),
                    ("error_rate", fp + fn + no(tp + tn)),
                    ("precision", tp + no(fp)),
                    ("recall", tp + no(fn)),
                    ("false_positive_rate", fp + no(tn)),
                    ("false_negative_rate", fn + no(tp)),
                ):
                    row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"], _ = design_ratio(rows)
                out[key] = row
        return out


def close(got: dict[str, Any], want: dict[str, Any], where: object) -> None:
    for name, value in want.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (where, name)
        else:
            assert got[name] == value, (where, name)


async def test_every_figure_of_the_report_against_the_truth(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    api_port = free_port()
    # (two days of history in one go: ingest must not take a partition read after another for late)
    env = {
        **service_env,
        "MODQ_DATABASE_URL": database_url,
        "MODQ_REPORT_MIN_VERDICTS": "30",
        "MODQ_LATE_GRACE_S": "864000",
    }
    scorer = spawn(["scorer"], env, "scorer")
    ingest = spawn(["ingest", "--port", str(free_port())], env, "ingest")
    spawn(["api", "--port", str(api_port)], env, "api")
    truth = Truth(env)
    truth.build(6_000)
    # Each topic in event-time order, as producers publish (ingest drops events hours behind their stream).
    await produce(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], [r for kind in "dva" for r in truth.records[kind]])
    port = env["MODQ_SCORER_WEB_PORT"]
    params = {"from": factories.ts(PERIOD[0]), "to": factories.ts(PERIOD[1])}

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
        await eventually(lambda: api_ready(client), 60)

        async def scored() -> bool:
            return await scorer_metric(port) >= truth.events

        await eventually(scored, 120)
        want_appeals = truth.appeal_rows()
        want_total = want_appeals[(None,) * 4]["complaints"]

        async def in_database() -> bool:
            report = (await client.get("/v1/reports/transparency", params=params)).json()
            totals = [r for r in report["appeals"] if all(r[k] is None for k in APPEAL_KEYS)]
            return bool(totals) and totals[0]["complaints"] == want_total

        await eventually(in_database, 60)
        # The period is closed and in the database: no Kafka, no scorer needed to report it.
        scorer.stop()
        ingest.stop()
        report = (await client.get("/v1/reports/transparency", params=params)).json()
        assert report["period"] == {"from": "2026-11-01T12:00:00Z", "to": "2026-11-03T12:00:00Z"}

        got = {tuple(r[k] for k in APPEAL_KEYS): r for r in report["appeals"]}
        assert set(got) == set(want_appeals)
        for key, want in want_appeals.items():
            close(got[key], want, key)
        for section, human in (("automated_accuracy", False), ("human_accuracy", True)):
            want_rows = truth.accuracy_rows(human)
            rows = {tuple(r[k] for k in ACCURACY_KEYS): r for r in report[section]}
            assert set(rows) == set(want_rows), section
            for key, want in want_rows.items():
                close(rows[key], want, (section, key))
                assert rows[key]["low_sample"] == (want["verdicts"] < 30)

        # CSV: RFC 4180, the documented columns, one row per breakdown; the CLI writes the same files.
        out = tmp_path / "report"
        cli = [sys.executable, "-m", "services.cli", "report", "transparency", "--out", str(out)]
        done = await asyncio.to_thread(
            subprocess.run,
            [*cli, "--from", params["from"], "--to", params["to"]],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        for section, columns in SECTIONS.items():
            resp = await client.get("/v1/reports/transparency", params={**params, "format": "csv", "section": section})
            assert resp.headers["content-type"].startswith("text/csv")
            parsed = list(csv.reader(io.StringIO(resp.content.decode("utf-8"), newline="")))
            assert tuple(parsed[0]) == columns
            assert len(parsed) - 1 == len(report[section])
            assert b"\r\n" in resp.content  # RFC 4180 line ends
            (written,) = out.glob(f"transparency-{section}-*.csv")
            assert written.read_bytes() == resp.content
        totals = next(
            r
            for r in csv.DictReader(io.StringIO((out / "transparency-appeals-2026-11-01-2026-11-03.csv").read_text()))
            if not any(r[k] for k in APPEAL_KEYS)
        )
        assert int(totals["complaints"]) == want_total
