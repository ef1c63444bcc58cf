"""Joins verdicts and appeals to their decision, whichever arrives first. Pure, no I/O.

State is one small record per decision_id. Every update is idempotent and independent of
arrival order: a redelivered event changes nothing, a superseding verdict replaces the one
it supersedes (without an explicit link the verdict with the later event time wins), so
replaying or shuffling a stream yields the same counts.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import msgspec

from services.contracts.alerts import iso
from services.contracts.batches import WireAppeal, WireDecision, WireEvent, WireVerdict
from services.contracts.codes import (
    ACTOR_TYPES,
    APPEAL_OUTCOMES,
    ERROR_TYPES,
    INCORRECT,
    OVER_ENFORCEMENT,
    OVERTURNING_OUTCOMES,
    UNABLE_TO_JUDGE,
    UNDER_ENFORCEMENT,
    WRONG_ACTION,
    WRONG_LABEL,
)
from services.contracts.remediations import (
    APPEAL_ERROR_TYPES,
    Finding,
    Remediation,
    Status,
    recommend,
    remediation_id,
)
from services.contracts.remediations import Evidence as RemediationEvidence
from services.domain.rates import BucketKey, Counts, bucket_start


class DecisionAttrs(msgspec.Struct, array_like=True, gc=False):
    policy_label: str
    vendor_id: str
    market: str
    t_ms: int
    # The slices attribution looks at (``SLICE_DIMENSIONS``, in order; "" when not given), and what a
    # remediation names. States written before these were kept decode with the defaults.
    slices: tuple[str, ...] = ()
    entity_type: str = ""
    entity_id: str = ""
    action: str = ""


SLICE_DIMENSIONS: Final = ("content_language", "queue_id", "model_version", "actor_type", "policy_version")
"""Decision dimensions counted per slice for attribution (market has its own column in the rates)."""
SLICE_MARK: Final = "\x1f"
"""A bucket key whose market starts with this (a control character, never in a label) is a slice
row: ``SLICE_MARK + <dimension index> + value`` (see ``slice_key``); the sink writes those to
``slice_buckets``."""


def slice_key(dimension: int, value: str) -> str:
    return f"{SLICE_MARK}{dimension}{value}"


def split_slice(market: str) -> tuple[str, str] | None:
    """(dimension, value) of a slice row's market field; None for a rate row."""
    if not market.startswith(SLICE_MARK):
        return None
    return SLICE_DIMENSIONS[int(market[1])], market[2:]


def attrs_of(ev: WireDecision) -> DecisionAttrs:
    actor = ACTOR_TYPES[ev.actor_type] if 0 <= ev.actor_type < len(ACTOR_TYPES) else ""
    slices = (ev.content_language, ev.queue_id, ev.model_version, actor, ev.policy_version)
    return DecisionAttrs(
        ev.policy_label, ev.vendor_id, ev.market, ev.t_ms, slices, ev.entity_type, ev.entity_id, ev.action
    )


class CurrentVerdict(msgspec.Struct, array_like=True, gc=False):
    verdict_id: str
    code: int
    error_type: int
    t_ms: int
    weight: float
    supersedes: str
    fed: bool = False


class DecisionState(msgspec.Struct, array_like=True, gc=False):
    """What is known of one decision: attributes (once seen), current verdict, appeals."""

    attrs: DecisionAttrs | None = None
    verdict: CurrentVerdict | None = None
    appeals: dict[str, tuple[int, int]] | None = None  # appeal_id -> (outcome, t_ms)
    touched_ms: int = 0


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(DecisionState)


def encode_state(state: DecisionState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> DecisionState:
    return _state_decoder.decode(raw)


def touched_ms(raw: bytes) -> int:
    """Event time of the newest event applied to an encoded state, without decoding all of it.

    ``touched_ms`` is the state's last field; an event time in ms (past 2**32) is encoded as
    msgpack uint64 (0xcf and eight bytes), read straight off the end. Anything else is decoded.
    """
    if len(raw) > 9 and raw[-9] == 0xCF:
        return int.from_bytes(raw[-8:], "big")
    return _state_decoder.decode(raw).touched_ms


def expired(states: Iterable[tuple[bytes, bytes]], cutoff_ms: int) -> list[bytes]:
    """Keys of the (key, encoded state) pairs whose newest event is older than ``cutoff_ms``."""
    return [key for key, raw in states if touched_ms(raw) < cutoff_ms]


@dataclass(frozen=True, slots=True)
class JudgedVerdict:
    """One judged verdict, fed to the drift detectors of its (policy_label, vendor_id) pair."""

    policy_label: str
    vendor_id: str
    t_ms: int
    is_error: bool
    error_type: int


class Deltas:
    """Per-batch accumulator of bucket count changes and detector outcomes.

    Most events are new decisions, which change one counter of one bucket: those counts are kept
    apart in ``decisions`` (an int per bucket), every other change in full rows in ``buckets``.
    ``rows()`` folds the two together.
    """

    __slots__ = ("buckets", "decisions", "findings", "judged", "outcomes", "sample_per_10k", "samples")

    def __init__(self, sample_rate: float = 0.0) -> None:
        self.buckets: dict[BucketKey, Counts] = {}
        self.decisions: dict[BucketKey, int] = {}
        self.outcomes: list[JudgedVerdict] = []
        self.findings: list[Remediation] = []  # remediation events (findings opened or retracted)
        # The re-review sample: decisions whose id hashes below the rate, and those of them judged.
        self.sample_per_10k = round(sample_rate * 10_000)
        self.samples: list[tuple[str, DecisionAttrs, bool]] = []
        self.judged: list[str] = []

    def sampled(self, decision_id: str) -> bool:
        return self.sample_per_10k > 0 and in_sample(decision_id, self.sample_per_10k)

    def rows(self) -> dict[BucketKey, Counts]:
        """Every bucket's changes as a full row of counts."""
        merged = {key: row.copy() for key, row in self.buckets.items()}
        for key, n in self.decisions.items():
            row = merged.get(key)
            if row is None:
                row = merged[key] = Counts()
            row.decisions += n
        return merged

    def _row(self, attrs: DecisionAttrs, t_ms: int) -> Counts:
        key = (attrs.policy_label, attrs.vendor_id, attrs.market, bucket_start(t_ms))
        row = self.buckets.get(key)
        if row is None:
            row = self.buckets[key] = Counts()
        return row

    def decision(self, attrs: DecisionAttrs) -> None:
        key = (attrs.policy_label, attrs.vendor_id, attrs.market, bucket_start(attrs.t_ms))
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def verdict(self, attrs: DecisionAttrs, v: CurrentVerdict, sign: int) -> None:
        _count_verdict(self._row(attrs, v.t_ms), v, sign)
        if v.code == UNABLE_TO_JUDGE:
            return
        start = bucket_start(v.t_ms)
        for i, value in enumerate(attrs.slices):
            if value:
                key = (attrs.policy_label, attrs.vendor_id, slice_key(i, value), start)
                row = self.buckets.get(key)
                if row is None:
                    row = self.buckets[key] = Counts()
                _count_verdict(row, v, sign)

    def appeal(self, attrs: DecisionAttrs, outcome: int, t_ms: int) -> None:
        row = self._row(attrs, t_ms)
        row.appeals += 1
        if outcome in OVERTURNING_OUTCOMES:
            row.overturned += 1

    def feed_detector(self, attrs: DecisionAttrs, v: CurrentVerdict) -> None:
        """Detectors see each decision's first judged verdict once; corrections only fix counts."""
        if v.code == UNABLE_TO_JUDGE or v.fed:
            return
        v.fed = True
        self.outcomes.append(
            JudgedVerdict(attrs.policy_label, attrs.vendor_id, v.t_ms, v.code == INCORRECT, v.error_type)
        )


def _finding(
    kind: Finding, decision_id: str, attrs: DecisionAttrs, evidence_id: str, error_type: str, status: Status, t_ms: int
) -> Remediation:
    return Remediation(
        remediation_id=remediation_id(kind, decision_id, evidence_id),
        decision_id=decision_id,
        entity_type=attrs.entity_type,
        entity_id=attrs.entity_id,
        policy_label=attrs.policy_label,
        vendor_id=attrs.vendor_id,
        market=attrs.market,
        action=attrs.action,
        error_type=error_type,
        recommendation=recommend(error_type, attrs.action),
        evidence=RemediationEvidence(
            verdict_ids=[evidence_id] if kind == "qa" else [], appeal_ids=[evidence_id] if kind == "appeal" else []
        ),
        status=status,
        finding=kind,
        decided_at=iso(attrs.t_ms),
        found_at=iso(t_ms),
    )


def qa_finding(decision_id: str, attrs: DecisionAttrs, v: CurrentVerdict, status: Status) -> Remediation:
    error_type = ERROR_TYPES[v.error_type] if 0 <= v.error_type < len(ERROR_TYPES) else "NONE"
    return _finding("qa", decision_id, attrs, v.verdict_id, error_type, status, v.t_ms)


def appeal_finding(decision_id: str, attrs: DecisionAttrs, appeal_id: str, outcome: int, t_ms: int) -> Remediation:
    error_type = APPEAL_ERROR_TYPES[APPEAL_OUTCOMES[outcome]]
    return _finding("appeal", decision_id, attrs, appeal_id, error_type, "open", t_ms)


def _count_verdict(row: Counts, v: CurrentVerdict, sign: int) -> None:
    if v.code == UNABLE_TO_JUDGE:
        row.unable_to_judge += sign
        return
    row.verdicts += sign
    row.weighted_verdicts += sign * v.weight
    if v.code == INCORRECT:
        row.errors += sign
        row.weighted_errors += sign * v.weight
        error_type = v.error_type
        if error_type == OVER_ENFORCEMENT:
            row.over_enforcement += sign
        elif error_type == UNDER_ENFORCEMENT:
            row.under_enforcement += sign
        elif error_type == WRONG_LABEL:
            row.wrong_label += sign
        elif error_type == WRONG_ACTION:
            row.wrong_action += sign


def _replaces(new: CurrentVerdict, cur: CurrentVerdict) -> bool:
    """True when verdict `new` should replace verdict `cur`, whatever order they came in."""
    if new.supersedes == cur.verdict_id:
        return True
    if cur.supersedes == new.verdict_id:
        return False
    return (new.t_ms, new.verdict_id) > (cur.t_ms, cur.verdict_id)


def in_sample(decision_id: str, per_10k: int) -> bool:
    """Whether a decision is in the re-review sample: a hash of its id, the same in every process."""
    return zlib.crc32(b"rereview|" + decision_id.encode()) % 10_000 < per_10k


def new_decision(ev: WireDecision, deltas: Deltas) -> DecisionState:
    """The state of a decision seen first (the common case, so kept to the least work)."""
    attrs = attrs_of(ev)
    deltas.decision(attrs)
    if deltas.sample_per_10k and deltas.sampled(ev.decision_id):
        deltas.samples.append((ev.decision_id, attrs, False))
    return DecisionState(attrs, None, None, ev.t_ms)


def apply_event(state: DecisionState | None, ev: WireEvent, deltas: Deltas) -> tuple[DecisionState, bool]:
    """Apply one wire event to a decision's state; returns (state, changed)."""
    if state is None:
        state = DecisionState()
    if isinstance(ev, WireDecision):
        if state.attrs is not None:
            return state, False
        attrs = state.attrs = attrs_of(ev)
        deltas.decision(attrs)
        if deltas.sample_per_10k and deltas.sampled(ev.decision_id):
            deltas.samples.append((ev.decision_id, attrs, state.verdict is not None))
        if state.verdict is not None:
            deltas.verdict(attrs, state.verdict, +1)
            deltas.feed_detector(attrs, state.verdict)
            if state.verdict.code == INCORRECT:
                deltas.findings.append(qa_finding(ev.decision_id, attrs, state.verdict, "open"))
        for appeal_id, (outcome, a_ms) in (state.appeals or {}).items():
            deltas.appeal(attrs, outcome, a_ms)
            if outcome in OVERTURNING_OUTCOMES:
                deltas.findings.append(appeal_finding(ev.decision_id, attrs, appeal_id, outcome, a_ms))
    elif isinstance(ev, WireVerdict):
        new = CurrentVerdict(ev.verdict_id, ev.code, ev.error_type, ev.t_ms, ev.weight, ev.supersedes)
        cur = state.verdict
        if cur is not None and (cur.verdict_id == new.verdict_id or not _replaces(new, cur)):
            return state, False
        if state.attrs is not None:
            if cur is not None:
                deltas.verdict(state.attrs, cur, -1)
                new.fed = cur.fed
                if cur.code == INCORRECT:
                    deltas.findings.append(qa_finding(ev.decision_id, state.attrs, cur, "retracted"))
            deltas.verdict(state.attrs, new, +1)
            deltas.feed_detector(state.attrs, new)
            if new.code == INCORRECT:
                deltas.findings.append(qa_finding(ev.decision_id, state.attrs, new, "open"))
        elif cur is not None:
            new.fed = cur.fed
        state.verdict = new
        if deltas.sample_per_10k and state.attrs is not None and deltas.sampled(ev.decision_id):
            deltas.judged.append(ev.decision_id)
    elif isinstance(ev, WireAppeal):
        appeals = state.appeals if state.appeals is not None else {}
        if ev.appeal_id in appeals:
            return state, False
        appeals[ev.appeal_id] = (ev.outcome, ev.t_ms)
        state.appeals = appeals
        if state.attrs is not None:
            deltas.appeal(state.attrs, ev.outcome, ev.t_ms)
            if ev.outcome in OVERTURNING_OUTCOMES:
                deltas.findings.append(appeal_finding(ev.decision_id, state.attrs, ev.appeal_id, ev.outcome, ev.t_ms))
    state.touched_ms = max(state.touched_ms, ev.t_ms)
    return state, True


Load = Callable[[bytes], bytes | None]


def score_batch(events: list[WireEvent], load: Load, into: Deltas | None = None) -> tuple[dict[bytes, bytes], Deltas]:
    """Apply a batch to decision state; returns the changed state records and the deltas.

    ``into`` accumulates the deltas of several batches (fewer, fuller bucket rows to add up);
    the outcomes of this batch are then the ones appended past its length before the call.
    """
    deltas = Deltas() if into is None else into
    states: dict[bytes, DecisionState] = {}
    changed: set[bytes] = set()
    for ev in events:
        key = ev.decision_id.encode()
        state = states.get(key)
        if state is None:
            raw = load(key)
            if raw is None and type(ev) is WireDecision:
                states[key] = new_decision(ev, deltas)
                changed.add(key)
                continue
            state = decode_state(raw) if raw is not None else None
        state, did_change = apply_event(state, ev, deltas)
        states[key] = state
        if did_change:
            changed.add(key)
    return {k: encode_state(states[k]) for k in changed}, deltas
