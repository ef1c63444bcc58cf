"""A large scorer input stream (wire batches, as ingest writes them) with its exact ground truth."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from services.contracts.batches import WireAppeal, WireDecision, WireEvent, WireVerdict, encode_batch, partition_for
from services.domain.rates import bucket_start

LABELS = [f"LABEL_{i}" for i in range(6)]
VENDORS = [f"V{i}" for i in range(4)]
MARKETS = ["DE", "FR"]
DRIFT_PAIR = ("LABEL_0", "V0")
T0 = 1_795_000_000_000
WRONG_LABEL = 3  # error-type code: counts as an error, for neither the over- nor under-enforcement rule

Key = tuple[str, str, int]  # (policy_label, vendor_id, bucket_start_ms)


@dataclass
class Stream:
    events: list[WireEvent]
    truth: dict[Key, list[int]] = field(default_factory=dict)  # key -> [decisions, verdicts, errors, appeals]

    def batches(self, partitions: int, size: int = 1000) -> list[tuple[int, bytes]]:
        """(partition, payload) records in arrival order, each batch from one partition."""
        out: list[tuple[int, bytes]] = []
        pending: dict[int, list[WireEvent]] = defaultdict(list)
        for ev in self.events:
            p = partition_for(ev.decision_id, partitions)
            pending[p].append(ev)
            if len(pending[p]) == size:
                out.append((p, encode_batch(pending.pop(p))))
        out.extend((p, encode_batch(evs)) for p, evs in sorted(pending.items()))
        return out


Drift = tuple[tuple[str, str], float, float, float]
"""(pair, from, to, error rate): the pair's rate between those fractions of the span."""


def make_stream(
    n_decisions: int, seed: int = 7, span_h: float = 2.0, drifts: tuple[Drift, ...] = ((DRIFT_PAIR, 0.5, 1.0, 0.25),)
) -> Stream:
    """Decisions over ``span_h`` hours; a verdict for every third one (a few minutes later,
    sometimes first); an appeal for every thirtieth. By default one pair drifts from 2% to 25%
    errors halfway; the others stay at 2%. Every event is distinct; the truth counts each once in
    its own bucket."""
    rng = random.Random(seed)
    events: list[tuple[int, int, WireEvent]] = []  # (arrival time, tie-break, event)
    truth: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    span_ms = int(span_h * 3600 * 1000)
    for i in range(n_decisions):
        label, vendor, market = rng.choice(LABELS), rng.choice(VENDORS), rng.choice(MARKETS)
        did = f"d{i}"
        t = T0 + i * span_ms // n_decisions
        events.append((t, 0, WireDecision(f"e-d{i}", did, t, label, vendor, market, "q", "m", 0)))
        truth[(label, vendor, bucket_start(t))][0] += 1
        if i % 3 == 0:
            rate = 0.02
            for pair, start, end, drift_rate in drifts:
                if (label, vendor) == pair and start * n_decisions < i <= end * n_decisions:
                    rate = drift_rate
            error = rng.random() < rate
            tv = t + rng.randint(1, 240) * 1000
            code, etype = (1, WRONG_LABEL) if error else (0, 0)
            arrival = tv if i % 10 else t - 1  # one in ten verdicts arrives before its decision
            events.append((arrival, 1, WireVerdict(f"e-v{i}", did, tv, f"v{i}", code, etype, "", 1.0)))
            k = truth[(label, vendor, bucket_start(tv))]
            k[1] += 1
            k[2] += error
        if i % 30 == 0:
            ta = t + rng.randint(300, 600) * 1000
            events.append((ta, 2, WireAppeal(f"e-a{i}", did, ta, f"a{i}", rng.choice([0, 1]))))
            truth[(label, vendor, bucket_start(ta))][3] += 1
    events.sort(key=lambda e: (e[0], e[1]))
    return Stream([e for _, _, e in events], dict(truth))


def redelivered_and_shuffled(stream: Stream, seed: int = 11, window: int = 2000) -> Stream:
    """Every event twice, shuffled within windows of ``window`` events (a few minutes of event
    time here); the truth is unchanged."""
    rng = random.Random(seed)
    doubled = [ev for ev in stream.events for _ in (0, 1)]
    out: list[WireEvent] = []
    for start in range(0, len(doubled), window):
        chunk = doubled[start : start + window]
        rng.shuffle(chunk)
        out.extend(chunk)
    return Stream(out, stream.truth)
