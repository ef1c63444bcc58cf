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
    AUDIT,
    CALIBRATION,
    ERROR_TYPES,
    GOLDEN,
    INCORRECT,
    NO_ERROR,
    OVER_ENFORCEMENT,
    OVERTURNING_OUTCOMES,
    QA,
    UNABLE_TO_JUDGE,
    UNDER_ENFORCEMENT,
    WRONG_ACTION,
    WRONG_LABEL,
)
from services.contracts.facts import AppealFact, Fact, Rating, ReviewItem
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
    # For the QA of QA and the DSA figures (states written before decode with the defaults).
    model_id: str = ""
    category: str = ""
    golden: int = -1  # the golden answer's error-type code; -1: not a golden item


SLICE_DIMENSIONS: Final = ("content_language", "queue_id", "model_version", "actor_type", "policy_version")
"""Decision dimensions counted per slice for attribution (market has its own column in the rates)."""
REVIEWER: Final = 5
"""Slice dimension ``reviewer_id``: each reviewer's current ratings (every tier), per hour."""
AUTOMATION: Final = 6
"""Slice dimension ``automation``: decisions and their primary verdicts per vendor and (actor type,
model id, model version, content language, enforcement or approval), per hour, on the policy label
``ANY_LABEL``: the DSA accuracy figures, which no policy label breaks down (a row per label would
multiply the rows every decision writes by the number of labels)."""
COMBINED: Final = 7
"""Slice dimension ``slices``: primary verdicts per combination of the ``SLICE_DIMENSIONS`` values
(joined by ``PART``, in order), per minute: one row a verdict instead of one per dimension; the
evidence query sums them per dimension (``expand_combined``). Rows of the single dimensions
(indexes 0-4) are what states written before this hold, read the same way."""
ROW_DIMENSIONS: Final = (*SLICE_DIMENSIONS, "reviewer_id", "automation", "slices")
"""Every slice dimension by its index in a slice row's key."""
PART: Final = "\x1f"
"""Separates the parts of an ``automation`` or ``slices`` value (a control character, never in a label)."""
ANY_LABEL: Final = "*"
"""The policy label of the ``automation`` rows (every label)."""
HOUR_MS: Final = 3_600_000
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
    return ROW_DIMENSIONS[int(market[1])], market[2:]


def expand_combined(value: str) -> list[tuple[str, str]]:
    """(dimension, value) of each given part of a ``slices`` row's value."""
    return [(d, v) for d, v in zip(SLICE_DIMENSIONS, value.split(PART), strict=False) if v]


def automation_value(attrs: DecisionAttrs) -> str:
    """An ``automation`` slice's value: actor type, model id, model version, content language and
    ``E`` (an enforcement: any action but APPROVE) or ``A`` (an approval), joined by ``PART``."""
    language, _, version, actor, _ = attrs.slices or ("", "", "", "", "")
    kind = "A" if attrs.action == "APPROVE" else "E"
    return f"{actor}{PART}{attrs.model_id}{PART}{version}{PART}{language}{PART}{kind}"


def attrs_of(ev: WireDecision) -> DecisionAttrs:
    actor = ACTOR_TYPES[ev.actor_type] if 0 <= ev.actor_type < len(ACTOR_TYPES) else ""
    slices = (ev.content_language, ev.queue_id, ev.model_version, actor, ev.policy_version)
    return DecisionAttrs(
        ev.policy_label,
        ev.vendor_id,
        ev.market,
        ev.t_ms,
        slices,
        ev.entity_type,
        ev.entity_id,
        ev.action,
        ev.model_id,
        ev.category,
        ev.golden_answer,
    )


class CurrentVerdict(msgspec.Struct, array_like=True, gc=False):
    verdict_id: str
    code: int
    error_type: int
    t_ms: int
    weight: float
    supersedes: str
    fed: bool = False
    reviewer: str = ""
    tier: int = QA
    scored: bool = False  # fed to its reviewer's agreement monitor (against an audit or golden answer)

    @property
    def category(self) -> int:
        """The verdict as a rating: its error type (NONE for CORRECT)."""
        return self.error_type if self.code == INCORRECT else NO_ERROR


class AppealDetails(msgspec.Struct, array_like=True, gc=False):
    """What an appeal adds beyond its outcome and time (kept for its DSA fact)."""

    filed_ms: int = 0
    resolved_ms: int = 0
    channel: str = ""


class DecisionState(msgspec.Struct, array_like=True, gc=False):
    """What is known of one decision: attributes (once seen), current primary verdict, appeals, and
    the current verdicts of the other QA tiers (calibrations, audit, golden answers).

    The fields after ``touched_ms`` are nil for nearly every decision, so ``touched_ms()`` still
    reads it off the end of the encoding."""

    attrs: DecisionAttrs | None = None
    verdict: CurrentVerdict | None = None
    appeals: dict[str, tuple[int, int]] | None = None  # appeal_id -> (outcome, t_ms)
    touched_ms: int = 0
    others: list[CurrentVerdict] | None = None
    appeal_details: dict[str, AppealDetails] | None = None  # appeal_id -> filed, resolved, channel


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(DecisionState)


def encode_state(state: DecisionState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> DecisionState:
    return _state_decoder.decode(raw)


def touched_ms(raw: bytes) -> int:
    """Event time of the newest event applied to an encoded state, without decoding all of it.

    An event time in ms (past 2**32) is encoded as msgpack uint64 (0xcf and eight bytes): the state's
    last field as written before the other tiers were kept, or followed by two nils (no other tiers,
    no appeal details) now; read straight off the end. Anything else is decoded.
    """
    if len(raw) > 11 and raw[-2:] == b"\xc0\xc0" and raw[-11] == 0xCF:
        return int.from_bytes(raw[-10:-2], "big")
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


@dataclass(frozen=True, slots=True)
class ScoredRating:
    """A reviewer's rating compared with its reference (an audit by another reviewer, or the golden
    answer), fed once to that reviewer's agreement monitor: ``disagrees`` is its hit."""

    reviewer_id: str
    t_ms: int
    disagrees: bool


class Deltas:
    """Per-batch accumulator of bucket count changes, detector outcomes and facts.

    Most events are new decisions, which change one counter of one bucket: those counts are kept
    apart in ``decisions`` (an int per bucket), every other change in full rows in ``buckets``.
    ``rows()`` folds the two together.
    """

    __slots__ = (
        "audit_replaces",
        "buckets",
        "decisions",
        "facts",
        "findings",
        "judged",
        "outcomes",
        "sample_per_10k",
        "samples",
        "scored",
    )

    def __init__(self, sample_rate: float = 0.0, audit_replaces: bool = False) -> None:
        self.buckets: dict[BucketKey, Counts] = {}
        self.decisions: dict[BucketKey, int] = {}
        self.outcomes: list[JudgedVerdict] = []
        self.findings: list[Remediation] = []  # remediation events (findings opened or retracted)
        self.facts: dict[tuple[str, str], Fact] = {}  # rows upserted by key (reviewed decisions, appeals)
        self.scored: list[ScoredRating] = []
        # The re-review sample: decisions whose id hashes below the rate, and those of them judged.
        self.sample_per_10k = round(sample_rate * 10_000)
        self.samples: list[tuple[str, DecisionAttrs, bool]] = []
        self.judged: list[str] = []
        self.audit_replaces = audit_replaces  # an AUDIT verdict is the primary verdict (MODQ_AUDIT_REPLACES_QA)

    def primary(self, tier: int) -> bool:
        """Whether a verdict of this tier is a decision's primary verdict (the one the rates count)."""
        return tier == QA or (tier == AUDIT and self.audit_replaces)

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

    def _bucket(self, key: BucketKey) -> Counts:
        row = self.buckets.get(key)
        if row is None:
            row = self.buckets[key] = Counts()
        return row

    def _row(self, attrs: DecisionAttrs, t_ms: int) -> Counts:
        return self._bucket((attrs.policy_label, attrs.vendor_id, attrs.market, bucket_start(t_ms)))

    def decision(self, attrs: DecisionAttrs) -> None:
        key = (attrs.policy_label, attrs.vendor_id, attrs.market, bucket_start(attrs.t_ms))
        self.decisions[key] = self.decisions.get(key, 0) + 1
        hour = attrs.t_ms - attrs.t_ms % HOUR_MS
        key = (ANY_LABEL, attrs.vendor_id, slice_key(AUTOMATION, automation_value(attrs)), hour)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def verdict(self, attrs: DecisionAttrs, v: CurrentVerdict, sign: int) -> None:
        """A primary verdict counted (+1) or taken back (-1): its rates, its slices, its DSA row."""
        _count_verdict(self._row(attrs, v.t_ms), v, sign)
        if v.code == UNABLE_TO_JUDGE:
            return
        if any(attrs.slices):
            combined = slice_key(COMBINED, PART.join(attrs.slices))
            _count_verdict(self._bucket((attrs.policy_label, attrs.vendor_id, combined, bucket_start(v.t_ms))), v, sign)
        hour = v.t_ms - v.t_ms % HOUR_MS
        automation = slice_key(AUTOMATION, automation_value(attrs))
        _count_verdict(self._bucket((ANY_LABEL, attrs.vendor_id, automation, hour)), v, sign)

    def rating(self, attrs: DecisionAttrs, v: CurrentVerdict, sign: int) -> None:
        """A reviewer's rating (a verdict of any tier, not UNABLE_TO_JUDGE) counted or taken back."""
        if v.code == UNABLE_TO_JUDGE or not v.reviewer:
            return
        hour = v.t_ms - v.t_ms % HOUR_MS
        row = self._bucket((attrs.policy_label, attrs.vendor_id, slice_key(REVIEWER, v.reviewer), hour))
        row.verdicts += sign
        if v.code == INCORRECT:
            row.errors += sign

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
    row.weighted_sq_verdicts += sign * v.weight * v.weight
    if v.code == INCORRECT:
        row.errors += sign
        row.weighted_errors += sign * v.weight
        row.weighted_sq_errors += sign * v.weight * v.weight
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
            deltas.facts[("appeal", appeal_id)] = _appeal_fact(ev.decision_id, state, appeal_id)
            if outcome in OVERTURNING_OUTCOMES:
                deltas.findings.append(appeal_finding(ev.decision_id, attrs, appeal_id, outcome, a_ms))
        if state.verdict is not None or state.others:
            for v in _ratings(state):
                deltas.rating(attrs, v, +1)
            _reviewed(ev.decision_id, state, None, deltas)
    elif isinstance(ev, WireVerdict):
        new = CurrentVerdict(
            ev.verdict_id, ev.code, ev.error_type, ev.t_ms, ev.weight, ev.supersedes, False, ev.reviewer_id, ev.tier
        )
        before = _review_item(ev.decision_id, state)
        if deltas.primary(ev.tier):
            cur = state.verdict
            if cur is not None and (cur.verdict_id == new.verdict_id or not _replaces(new, cur)):
                return state, False
            if state.attrs is not None:
                if cur is not None:
                    deltas.verdict(state.attrs, cur, -1)
                    deltas.rating(state.attrs, cur, -1)
                    new.fed = cur.fed
                    if cur.code == INCORRECT:
                        deltas.findings.append(qa_finding(ev.decision_id, state.attrs, cur, "retracted"))
                deltas.verdict(state.attrs, new, +1)
                deltas.rating(state.attrs, new, +1)
                deltas.feed_detector(state.attrs, new)
                if new.code == INCORRECT:
                    deltas.findings.append(qa_finding(ev.decision_id, state.attrs, new, "open"))
            elif cur is not None:
                new.fed = cur.fed
            state.verdict = new
            if deltas.sample_per_10k and state.attrs is not None and deltas.sampled(ev.decision_id):
                deltas.judged.append(ev.decision_id)
        else:
            others = state.others if state.others is not None else []
            if any(o.verdict_id == new.verdict_id for o in others):
                return state, False
            rival = next((o for o in others if _same_place(new, o)), None)
            if rival is not None:
                if not _replaces(new, rival):
                    return state, False
                others.remove(rival)
                if state.attrs is not None:
                    deltas.rating(state.attrs, rival, -1)
            others.append(new)
            state.others = others
            if state.attrs is not None:
                deltas.rating(state.attrs, new, +1)
        if state.attrs is not None:
            _reviewed(ev.decision_id, state, before, deltas)
    elif isinstance(ev, WireAppeal):
        appeals = state.appeals if state.appeals is not None else {}
        if ev.appeal_id in appeals:
            return state, False
        appeals[ev.appeal_id] = (ev.outcome, ev.t_ms)
        state.appeals = appeals
        if ev.filed_ms or ev.resolved_ms or ev.channel:
            details = state.appeal_details if state.appeal_details is not None else {}
            details[ev.appeal_id] = AppealDetails(ev.filed_ms, ev.resolved_ms, ev.channel)
            state.appeal_details = details
        if state.attrs is not None:
            deltas.appeal(state.attrs, ev.outcome, ev.t_ms)
            deltas.facts[("appeal", ev.appeal_id)] = _appeal_fact(ev.decision_id, state, ev.appeal_id)
            if ev.outcome in OVERTURNING_OUTCOMES:
                deltas.findings.append(appeal_finding(ev.decision_id, state.attrs, ev.appeal_id, ev.outcome, ev.t_ms))
    state.touched_ms = max(state.touched_ms, ev.t_ms)
    return state, True


def _same_place(new: CurrentVerdict, old: CurrentVerdict) -> bool:
    """Whether ``new`` competes with ``old`` for one place among a decision's other tiers: one audit
    per decision; one calibration (one golden answer) per reviewer; or ``new`` names ``old``."""
    if new.tier != old.tier:
        return False
    if old.verdict_id in (new.supersedes,) or new.verdict_id == old.supersedes:
        return True
    return new.tier == AUDIT or (new.tier in (CALIBRATION, GOLDEN) and new.reviewer == old.reviewer)


def _ratings(state: DecisionState) -> list[CurrentVerdict]:
    """A decision's current verdicts of every tier that judged it (not UNABLE_TO_JUDGE)."""
    found = [state.verdict] if state.verdict is not None else []
    found += state.others or []
    return [v for v in found if v.code != UNABLE_TO_JUDGE]


def _review_item(decision_id: str, state: DecisionState) -> ReviewItem | None:
    """The decision as a reviewed item, if it is one: rated by two or more reviewers, audited, or a
    golden item with a rating (None otherwise, and before its decision is known)."""
    attrs = state.attrs
    if attrs is None:
        return None
    ratings = _ratings(state)
    reviewed = (
        len({v.reviewer for v in ratings}) >= 2
        or (attrs.golden >= 0 and bool(ratings))
        or any(v.tier == AUDIT for v in ratings)
    )
    if not reviewed:
        return None
    return _item(decision_id, attrs, ratings)


def _item(decision_id: str, attrs: DecisionAttrs, ratings: list[CurrentVerdict]) -> ReviewItem:
    found = (Rating(v.verdict_id, v.reviewer, v.tier, v.category, v.t_ms) for v in ratings)
    snapshot = tuple(sorted(found, key=lambda r: r.verdict_id))
    return ReviewItem(
        decision_id, attrs.policy_label, attrs.vendor_id, attrs.market, attrs.t_ms, attrs.golden, snapshot
    )


def _reviewed(decision_id: str, state: DecisionState, before: ReviewItem | None, deltas: Deltas) -> None:
    """The decision's review item when its ratings changed, and each rating scored against the
    reference once it has one (an audit by another reviewer, or the golden answer)."""
    attrs = state.attrs
    assert attrs is not None
    after = _review_item(decision_id, state)
    ratings = _ratings(state)
    if after != before and (after is not None or before is not None):
        # (no longer a reviewed item: its row keeps what is left, and readers skip it)
        deltas.facts[("review", decision_id)] = after or _item(decision_id, attrs, ratings)
    audit = next((v for v in ratings if v.tier == AUDIT), None)
    if attrs.golden < 0 and audit is None:
        return
    for v in ratings:
        if v.scored or v is audit or not v.reviewer or (audit is not None and v.reviewer == audit.reviewer):
            continue
        v.scored = True
        if attrs.golden >= 0:
            deltas.scored.append(ScoredRating(v.reviewer, v.t_ms, v.category != attrs.golden))
        elif audit is not None:
            deltas.scored.append(ScoredRating(v.reviewer, max(v.t_ms, audit.t_ms), v.category != audit.category))


def _appeal_fact(decision_id: str, state: DecisionState, appeal_id: str) -> AppealFact:
    attrs = state.attrs
    assert attrs is not None and state.appeals is not None
    outcome, t_ms = state.appeals[appeal_id]
    details = (state.appeal_details or {}).get(appeal_id) or AppealDetails()
    return AppealFact(
        appeal_id,
        decision_id,
        attrs.policy_label,
        attrs.vendor_id,
        attrs.market,
        attrs.category,
        details.channel,
        outcome,
        t_ms,
        details.filed_ms,
        details.resolved_ms,
        attrs.t_ms,
    )


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
