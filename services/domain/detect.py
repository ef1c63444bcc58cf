"""The detection stage's work on one pair: its monitors over a group of judged verdicts (or an
operator's re-baseline request), giving the pair's new state and its alert changes. Pure, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from services.contracts.alerts import REVIEWER_RULES, RULE_ERROR_RATE, RULES, AlertEvent
from services.contracts.pairs import (
    SCOPE_LABEL,
    SCOPE_PAIR,
    SCOPE_REVIEWER,
    WIDER_SCOPES,
    Rebaseline,
    ScopeOutcomes,
    ScopeUpdate,
    cross_key,
    decode_pair_key,
    decode_pair_message,
    encode_scope_update,
    member_key,
    scope_of,
)
from services.domain.catchup import historical
from services.domain.join import Load
from services.domain.monitor import MonitorPolicy, MonitorState, PairMonitor, rule_hit

_msgpack = msgspec.msgpack.Encoder()


class PairState(msgspec.Struct, array_like=True):
    """A pair's (or a wider scope's) detector state: its monitors by rule, and per events partition
    the highest source offset already applied (see OutcomeBatch).

    A pair also keeps what its wider scopes told it (``ScopeUpdate``), by ``scope|rule``: their
    firing alerts and their baselines. A wider scope keeps the members it has seen, to tell them."""

    monitors: dict[str, MonitorState]
    applied: dict[int, int] = {}
    parents: dict[str, str] = {}
    priors: dict[str, float] = {}
    members: list[str] = []
    parents_started: dict[str, int] = {}  # same keys as parents: when that alert was raised
    told: dict[str, str] = {}  # wider scope: rule -> the paged alert id its members were last told ("" none)
    member_counts: dict[str, tuple[float, float, int]] = {}  # wider scope: member -> decayed (n, errors, at)
    clock: int = 0  # wider scope: verdicts seen (the decay's clock)
    watching: dict[str, bool] = {}  # pair: by ``scope|rule|owner``, whether that wider scope is watching
    watched: list[str] = []  # wider scope: ``rule|member`` of the members last told it is watching for them


MEMBER_HALF_LIFE = 2_000
"""Verdicts of a wider scope after which a member's recent counts weigh half (``explains``)."""
_DECAY = 0.5 ** (1 / MEMBER_HALF_LIFE)


def _count_member(stored: PairState, member: str, is_error: bool) -> None:
    n, e, at = stored.member_counts.get(member, (0.0, 0.0, stored.clock))
    f = _DECAY ** (stored.clock - at)
    stored.member_counts[member] = (n * f + 1, e * f + is_error, stored.clock)


ALONE_LLR = 3.0
"""How much more likely (log-likelihood) *one member moved* must be than *the scope moved* before a
firing wider alert stops taking pair alerts under it (``_scope_notices``): e^3 = 20 to 1. Pairs link
under a firing wider alert by default, so undoing that asks for strong evidence."""
PARENT_LLR = 2.0
"""The same margin for a wider alert to link under one of the other kind (``_parents``): e^2 = 7 to 1.
With none (the better model by a hair) a label-wide alert of a shift spread over its vendors linked
under whichever vendor's alert fired first about one time in ten (docs/alert-to-action.md)."""


WATCH_DROP = 3.0
"""A wider scope is *near* its threshold while its alert is not firing and its detector statistic is
within this of the threshold (the likelihood of a change at 1/20 of what pages); it stays near until
the statistic is ``WATCH_HYSTERESIS`` lower again, so a statistic wandering about the level does not
send news on every record."""
WATCH_HYSTERESIS = 1.0
WATCH_REST_LLR = 1.0
"""A scope near its threshold is *watching* for a member (the member's alarm is held for it,
``PairMonitor.settle``) when its other members' recent errors are also above the baseline: their
pooled rate is more likely than the baseline by this (log; ``rest_rose``). A pair that drifts alone
pushes its label's statistic up too, but not the rest of the label, and is paged at once."""


def _near(monitor: PairMonitor, was: bool) -> bool:
    d = monitor.detector
    if monitor.state.firing or d is None:
        return False
    return monitor.statistic() >= d.h - WATCH_DROP - (WATCH_HYSTERESIS if was else 0.0)


def recent_counts(stored: PairState) -> dict[str, tuple[float, float]]:
    """A wider scope's members' recent (decayed, half-life ``MEMBER_HALF_LIFE`` verdicts) verdicts and
    errors."""
    return {m: (n * (f := _DECAY ** (stored.clock - at)), e * f) for m, (n, e, at) in stored.member_counts.items()}


def rest_rose(recent: dict[str, tuple[float, float]], member: str, baseline: float) -> float:
    """Log-likelihood ratio of the scope's members other than ``member``, over their ``recent_counts``:
    at their pooled rate against at ``baseline`` (0 when not above it)."""
    n = e = 0.0
    for m, (n_m, e_m) in recent.items():
        if m != member:
            n, e = n + n_m, e + e_m
    if n <= 0 or e <= n * baseline:
        return 0.0
    return _loglik(e, n, e / n) - _loglik(e, n, baseline)


def _loglik(errors: float, n: float, p: float) -> float:
    """Binomial log-likelihood of ``errors`` in ``n`` at rate ``p`` (without the constant)."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return errors * math.log(p) + (n - errors) * math.log(1 - p)


def explains(stored: PairState, member: str, baseline: float, margin: float = 0.0) -> bool:
    """Whether ``member`` alone explains the scope's recent rise better than a rise of every member.

    Two one-parameter models of the recent (decayed, half-life ``MEMBER_HALF_LIFE`` verdicts)
    counts, compared by likelihood: *one member moved* (``member`` at its own rate, every other at
    ``baseline``) against *the scope moved* (every member at the pooled rate). This is the question
    a model logit p = mu + a(label) + b(vendor) + g(label, vendor) asks of a label-wide (or
    vendor-wide) rise: is it the pair's term g or the scope's term a (b)? Shares of the recent
    excess decided it before, and at a label-wide alarm a few hours into a shift, when every
    member's excess is mostly noise, one member's chance share was often high enough to keep the
    pairs of a policy incident from linking under it. ``margin``: how much more likely (log) the
    one-member model must be.
    """
    return alone_margins(recent_counts(stored), baseline).get(member, -math.inf) > margin


def alone_margins(recent: dict[str, tuple[float, float]], baseline: float) -> dict[str, float]:
    """For each member whose ``recent_counts`` are above ``baseline``: the log-likelihood of *it
    alone moved* minus that of *the scope moved* (``explains``), for every member in one pass. A
    binomial log-likelihood at a fixed rate is linear in the counts, so every other member at the
    baseline is the rest's summed counts at it, and every member at the pooled rate the scope's."""
    total_n = sum(n for n, _ in recent.values())
    total_e = sum(e for _, e in recent.values())
    rising = [(m, n, e) for m, (n, e) in recent.items() if n > 0 and e > n * baseline]
    if not rising:
        return {}
    spread = _loglik(total_e, total_n, max(total_e / total_n, baseline))
    return {m: _loglik(e, n, e / n) + _loglik(total_e - e, total_n - n, baseline) - spread for m, n, e in rising}


_pair_state_decoder = msgspec.msgpack.Decoder(PairState)


@dataclass(slots=True)
class Detection:
    """What one detect() call did: the pair's new state, its alert changes, and what it saw."""

    state: bytes
    changes: list[AlertEvent]
    policy_label: str
    vendor_id: str
    outcomes: list[tuple[int, bool, int]]  # (t_ms, is_error, error-type code)
    statistics: dict[str, tuple[float, bool]]  # rule -> (detector statistic, firing)
    scope: str = SCOPE_PAIR
    notices: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(pair key, encoded ScopeUpdate) for the topic, from a wider scope to its members."""


def _news_key(scope: str, rule: str, owner: str) -> str:
    return f"{scope}|{rule}|{owner}"


def _prior(stored: PairState, rule: str) -> tuple[float, str] | None:
    """The prior a learning pair is held to: its label's baseline across vendors, else its vendor's
    across labels, else (None) the configured rate."""
    for scope in WIDER_SCOPES:
        for key in sorted(stored.priors):
            if key.startswith(f"{scope}|{rule}|") and (rate := stored.priors[key]) > 0:
                return rate, scope
    return None


def _parents(stored: PairState, rule: str, scope: str, baseline: float) -> list[tuple[str, int]]:
    """The firing, paged wider alerts this scope's alert of ``rule`` would be explained by, with when
    each was raised, in order of preference (``PairMonitor.update`` links to the first). For a pair:
    its label's across vendors, then its vendor's across labels. For a wider scope: a firing alert
    of the other kind on one of its members that alone explains its recent rise (``explains``): a
    vendor-wide shift whose excess is in one label during that label's incident is the incident's,
    a label-wide shift whose excess is in one vendor is that vendor's problem; a shift spread over
    the members is its own, whatever else fires (another incident, a false alarm)."""
    out = []
    for kind in WIDER_SCOPES:
        for key in sorted(stored.parents):
            if key.startswith(f"{kind}|{rule}|") and (alert_id := stored.parents[key]):
                owner = key.split("|", 2)[2]
                if scope == SCOPE_PAIR or explains(stored, owner, baseline, PARENT_LLR):
                    out.append((alert_id, stored.parents_started.get(key, 0)))
    return out


def _held(stored: PairState, rule: str) -> bool:
    """Whether a wider scope of this pair is watching for ``rule`` (its alarm waits: ``settle``)."""
    return any(on for key, on in stored.watching.items() if on and key.split("|", 2)[1] == rule)


def detect(
    pair_key: bytes, payload: bytes, load: Load, policy: MonitorPolicy, horizon_ms: int = 3_600_000
) -> Detection:
    """Run one pair's monitors over a group of outcomes (or a control record).

    An alert change further behind the newest event on the input than ``horizon_ms`` (event time)
    is ``historical``: recorded, never paged (a backfill of old history raises no page). An alert
    that fired as history and is still firing when the input's newest events reach it is
    announced again then, as current (``PairMonitor.announce``)."""
    label, vendor = decode_pair_key(pair_key)
    scope = scope_of(label, vendor)
    raw = load(pair_key)
    stored = _pair_state_decoder.decode(raw) if raw is not None else PairState({})
    monitors = {
        rule: PairMonitor(
            rule,
            label,
            vendor,
            policy,
            state=stored.monitors.get(rule, MonitorState()),
            prior=_prior(stored, rule) if scope == SCOPE_PAIR else None,  # a wider scope's: the configured rate
            members=len(stored.members) if scope in WIDER_SCOPES else 1,
        )
        for rule in (REVIEWER_RULES if scope == SCOPE_REVIEWER else RULES)
    }
    events: list[AlertEvent] = []
    message = decode_pair_message(payload)
    outcomes: list[tuple[int, bool, int]] = []
    baselines = {rule: m.state.baseline for rule, m in monitors.items()}
    new_members: list[str] = []
    if isinstance(message, Rebaseline):
        for rule, monitor in monitors.items():
            if message.rule in (None, rule) and (change := monitor.rebaseline(message.rate, message.t_ms)):
                events.append(change)
    elif isinstance(message, ScopeUpdate):
        key = _news_key(message.scope, message.rule, message.owner)
        was = stored.parents.get(key, "")
        stored.parents[key] = message.alert_id
        stored.parents_started[key] = message.started_ms
        stored.priors[key] = message.baseline
        stored.watching[key] = message.watching
        linked = monitors.get(message.rule)
        if linked is not None and was and was != message.alert_id and (news := linked.unlink(was, message.t_ms)):
            events.append(news)
        if linked is not None and scope == SCOPE_PAIR and linked.state.held_ms:
            base = monitors[RULE_ERROR_RATE].baseline_rate()
            parents_now = _parents(stored, message.rule, scope, base)
            if news := linked.settle(parents_now, _held(stored, message.rule), message.t_ms):
                events.append(news)
    else:
        applied, before = stored.applied, dict(stored.applied)  # a record's items share its offset
        seen = set(stored.members)
        items = message.items if isinstance(message, ScopeOutcomes) else [(*i, "") for i in message.items]
        for partition, offset, t_ms, e, code, member in items:
            if offset > before.get(partition, -1):
                applied[partition] = offset
                outcomes.append((t_ms, e, code))
                if member:
                    stored.clock += 1
                    _count_member(stored, member, e)
                    if member not in seen:
                        seen.add(member)
                        new_members.append(member)
        stored.members.extend(new_members)
        if scope in WIDER_SCOPES and len(stored.members) < 2:
            outcomes = []  # a label with one vendor (a vendor with one label) is watched as the pair
        head = message.head_ms
        parents: dict[str, list[tuple[str, int]]] = {rule: [] for rule in monitors}
        hold = dict.fromkeys(monitors, False)
        if scope != SCOPE_REVIEWER:
            base = monitors[RULE_ERROR_RATE].baseline_rate()  # members' counts are of every error
            parents = {rule: _parents(stored, rule, scope, base) for rule in RULES}
        if scope == SCOPE_PAIR:
            hold = {rule: _held(stored, rule) for rule in RULES}
        for t_ms, is_error, error_type in outcomes:
            old = historical(t_ms, head, horizon_ms)
            for rule, monitor in monitors.items():
                if not old and (news := monitor.announce(t_ms)) is not None:
                    events.append(news)
                hit = rule_hit(rule, is_error, error_type)
                change = monitor.update(hit, t_ms, historical=old, parents=parents[rule], hold=hold[rule])
                if change is not None:
                    events.append(change)
    t_last = max((t for t, _, _ in outcomes), default=getattr(message, "t_ms", 0))
    notices = _scope_notices(scope, (label, vendor), stored, new_members, monitors, baselines, events, t_last)
    snapshots = {rule: m.snapshot() for rule, m in monitors.items()}
    return Detection(
        state=_msgpack.encode(msgspec.structs.replace(stored, monitors=snapshots)),
        changes=events,
        policy_label=label,
        vendor_id=vendor,
        outcomes=outcomes,
        statistics={rule: (m.statistic(), m.state.firing and not m.state.held_ms) for rule, m in monitors.items()},
        scope=scope,
        notices=notices,
    )


def _scope_notices(
    scope: str,
    owner: tuple[str, str],
    stored: PairState,
    new_members: list[str],
    monitors: dict[str, PairMonitor],
    baselines_before: dict[str, float],
    events: list[AlertEvent],
    t_ms: int,
) -> list[tuple[bytes, bytes]]:
    """What a wider scope tells its member pairs and its members' other wider scopes: a new member
    everything, every member a rule's alert fired, resolved or linked, and its baseline once frozen
    (or moved by an operator). Only an alert that is paged itself is news to them: one linked under
    another's does not become their parent, and neither does one whose recent excess sits in one
    member (``explains``): that is the member's problem, its pair alert pages on its own and the
    wider alert's attribution names the member."""
    if scope not in WIDER_SCOPES:
        return []
    members = stored.members
    base = monitors[RULE_ERROR_RATE].baseline_rate()
    recent = recent_counts(stored)
    alone = alone_margins(recent, base)
    concentrated = any(alone.get(m, -math.inf) > ALONE_LLR for m in members)
    out: list[tuple[bytes, bytes]] = []
    changed = {e.rule for e in events} | {r for r, m in monitors.items() if m.state.baseline != baselines_before[r]}
    name = owner[0] if scope == SCOPE_LABEL else owner[1]
    watched = set(stored.watched)
    for rule, monitor in monitors.items():
        st = monitor.state
        paged = monitor.alert_id() if st.firing and not st.parent_alert_id and not concentrated else ""
        if stored.told.get(rule, "") != paged:  # (its excess concentrated in a member, or spread again)
            changed.add(rule)
            stored.told[rule] = paged
        near = _near(monitor, any(w.startswith(f"{rule}|") for w in watched))
        for m in members:
            was = f"{rule}|{m}" in watched
            level = WATCH_REST_LLR - (WATCH_HYSTERESIS / 2 if was else 0.0)
            watch = near and rest_rose(recent, m, base) >= level
            (watched.add if watch else watched.discard)(f"{rule}|{m}")
            if rule not in changed and m not in new_members and watch == was:
                continue
            news = ScopeUpdate(scope, rule, name, paged, st.baseline, t_ms, st.started_ms if paged else 0, watch)
            out.append((member_key(scope, owner, m), encode_scope_update(news)))
            if rule in changed or m in new_members:  # (the member's other wider scope does not hold)
                out.append((cross_key(scope, m), encode_scope_update(msgspec.structs.replace(news, watching=False))))
    stored.watched = sorted(watched)
    return out


def detect_many(
    records: Sequence[tuple[int, bytes, bytes]],
    load: Callable[[int, bytes], bytes | None],
    policy: MonitorPolicy,
    horizon_ms: int = 3_600_000,
) -> list[tuple[int, bytes, Detection]]:
    """``detect`` over a batch of (partition, key, payload) records, wider scopes first, each result
    with its partition and key in the order applied (a key's later results see its earlier states).

    A wider scope's news for a pair whose records are in the same batch is applied to that pair
    before them (and still sent on the topic, where applying it again changes nothing): a pair
    alarm in the same batch as its label's is then linked as it would be a batch later. The order
    of records of different keys is free (each key's own order is kept), so this changes no count.
    """
    order = sorted(range(len(records)), key=lambda i: scope_of(*decode_pair_key(records[i][1])) == SCOPE_PAIR)
    last = {records[i][1]: k for k, i in enumerate(order)}  # a key's last record in the order
    pending = set(last)
    early: dict[bytes, list[bytes]] = {}
    latest: dict[tuple[int, bytes], bytes] = {}
    out: list[tuple[int, bytes, Detection]] = []

    def run(p: int, key: bytes, payload: bytes) -> Detection:
        found = detect(key, payload, lambda k: latest.get((p, k)) or load(p, k), policy, horizon_ms)
        latest[(p, key)] = found.state
        out.append((p, key, found))
        return found

    for k, i in enumerate(order):
        p, key, payload = records[i]
        for news in early.pop(key, []):
            run(p, key, news)
        found = run(p, key, payload)
        if last[key] == k:
            pending.discard(key)
        for target, update in found.notices:
            if target in pending:
                early.setdefault(target, []).append(update)
    return out
