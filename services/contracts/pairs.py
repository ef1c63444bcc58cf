"""The pair-outcomes topic: judged verdicts grouped by (policy_label, vendor_id), from the events
stage to the detection stage, and operators' re-baseline requests on the same key.

Key: msgpack ``(policy_label, vendor_id)``. Value: msgpack ``OutcomeBatch`` or ``Rebaseline``.

The wider scopes travel on the same topic: a policy label across its vendors under the key
``(policy_label, "*")``, a vendor across its labels under ``("*", vendor_id)`` (``*`` is refused as
a label or vendor id at ingest), with ``ScopeOutcomes`` that name each verdict's member (the vendor
of a label-wide item, the label of a vendor-wide one). A wider scope tells its member pairs what
they need of it with ``ScopeUpdate`` records on the pairs' own keys: its firing alert (a pair alert
raised under it is linked to it and not paged on its own) and its baseline (the prior a pair is
held to until it has learned its own).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import msgspec

from services.contracts.events import WILDCARD

SCOPE_PAIR = "pair"
SCOPE_LABEL = "policy_label"
SCOPE_VENDOR = "vendor"
SCOPE_REVIEWER = "reviewer"
WIDER_SCOPES = (SCOPE_LABEL, SCOPE_VENDOR)
REVIEWER_LABEL = ""
"""The policy label of a reviewer's key, ``("", reviewer_id)`` (a policy label is never empty): the
reviewer's ratings scored against their reference, one item per rating (hit: it disagrees)."""

_msgpack = msgspec.msgpack.Encoder()
_pair_key_decoder = msgspec.msgpack.Decoder(tuple[str, str])


def pair_key(policy_label: str, vendor_id: str) -> bytes:
    """Kafka key of a (policy_label, vendor_id) pair on the pair-outcomes topic."""
    return _msgpack.encode((policy_label, vendor_id))


def decode_pair_key(raw: bytes) -> tuple[str, str]:
    return _pair_key_decoder.decode(raw)


def scope_of(policy_label: str, vendor_id: str) -> str:
    """``pair``, ``policy_label`` (every vendor of a label: vendor ``*``), ``vendor`` (label ``*``) or
    ``reviewer`` (label empty: the key's second part is the reviewer)."""
    if policy_label == REVIEWER_LABEL:
        return SCOPE_REVIEWER
    if vendor_id == WILDCARD:
        return SCOPE_LABEL
    if policy_label == WILDCARD:
        return SCOPE_VENDOR
    return SCOPE_PAIR


def scope_key(scope: str, policy_label: str, vendor_id: str) -> bytes:
    """The key of the wider scope ``scope`` that the pair (policy_label, vendor_id) belongs to."""
    if scope == SCOPE_LABEL:
        return pair_key(policy_label, WILDCARD)
    return pair_key(WILDCARD, vendor_id)


def member_key(scope: str, owner: tuple[str, str], member: str) -> bytes:
    """The pair key of ``member`` (a vendor of a label-wide scope, a label of a vendor-wide one)."""
    label, vendor = owner
    return pair_key(label, member) if scope == SCOPE_LABEL else pair_key(member, vendor)


def cross_key(scope: str, member: str) -> bytes:
    """The other wider scope of ``member``: a member vendor's vendor-wide key for a label-wide scope,
    a member label's label-wide key for a vendor-wide one."""
    return pair_key(WILDCARD, member) if scope == SCOPE_LABEL else pair_key(member, WILDCARD)


class OutcomeBatch(msgspec.Struct, tag="outcomes"):
    """Judged verdicts of one pair, in the order the scorer applied them.

    Each item is (source partition, source offset, t_ms, is_error, error-type code). The detectors
    keep, per pair, the highest source offset they have applied for each events partition and
    skip items at or below it: a batch replayed after a crash (its decision state already
    written, its offset not yet committed) then feeds no verdict twice, however the replay chunks
    the records.
    """

    items: list[tuple[int, int, int, bool, int]]
    head_ms: int = 0  # the event time of the newest event the sending worker knows on its input


class Rebaseline(msgspec.Struct, tag="rebaseline"):
    """Control record on the pair-outcomes topic: an operator re-baselines a pair's monitors."""

    rule: str | None = None  # None: every rule of the pair
    rate: float | None = None  # None: learn the baseline again from now on
    t_ms: int = 0


class ScopeOutcomes(msgspec.Struct, tag="scope_outcomes"):
    """Judged verdicts of one wider scope: items as ``OutcomeBatch``'s plus the verdict's member
    (the vendor for a label-wide scope, the label for a vendor-wide one)."""

    items: list[tuple[int, int, int, bool, int, str]]
    head_ms: int = 0


class ScopeUpdate(msgspec.Struct, tag="scope_update"):
    """From a wider scope to one of its member pairs (and to the other wider scope of that member),
    for one rule: the scope's firing alert that is paged itself ("" when none, or when it is linked
    under another) and its baseline (0 while it has none). ``owner`` is the sending scope's label
    (for ``policy_label``) or vendor (for ``vendor``)."""

    scope: str
    rule: str
    owner: str
    alert_id: str = ""
    baseline: float = 0.0
    t_ms: int = 0
    started_ms: int = 0  # when the firing alert was raised (event time): it explains only later onsets
    watching: bool = False  # for this member: its alarm is held a while (detect.WATCH_DROP, PairMonitor.settle)


PairMessage = OutcomeBatch | Rebaseline | ScopeOutcomes | ScopeUpdate
_message_decoder: msgspec.msgpack.Decoder[PairMessage] = msgspec.msgpack.Decoder(PairMessage)


def encode_scope_update(update: ScopeUpdate) -> bytes:
    return _msgpack.encode(update)


def encode_rebaseline(request: Rebaseline) -> bytes:
    return _msgpack.encode(request)


def decode_pair_message(payload: bytes) -> PairMessage:
    return _message_decoder.decode(payload)


class PairVerdict(Protocol):
    """What the events stage knows of one judged verdict (``domain.join.JudgedVerdict`` is one)."""

    @property
    def policy_label(self) -> str: ...
    @property
    def vendor_id(self) -> str: ...
    @property
    def t_ms(self) -> int: ...
    @property
    def is_error(self) -> bool: ...
    @property
    def error_type(self) -> int: ...


class ScoredItem(Protocol):
    """A reviewer's rating scored against its reference (``domain.join.ScoredRating`` is one)."""

    @property
    def reviewer_id(self) -> str: ...
    @property
    def t_ms(self) -> int: ...
    @property
    def disagrees(self) -> bool: ...


def group_outcomes(
    chunks: Iterable[tuple[int, int, Iterable[PairVerdict]]],
    head_ms: int = 0,
    scored: Iterable[tuple[int, int, Iterable[ScoredItem]]] = (),
) -> dict[bytes, bytes]:
    """Judged verdicts grouped by pair (key ``pair_key``, value an encoded ``OutcomeBatch``) and by
    each pair's two wider scopes (value an encoded ``ScopeOutcomes``); and scored ratings grouped
    by reviewer (key ``("", reviewer_id)``, an ``OutcomeBatch`` whose items' hit is a disagreement).

    ``chunks`` (and ``scored``) are (source partition, source offset, what the record there gave),
    in the order they were applied (each partition's in offset order).
    """
    grouped: dict[tuple[str, str], list[tuple[int, int, int, bool, int]]] = {}
    wider: dict[tuple[str, str], list[tuple[int, int, int, bool, int, str]]] = {}
    for partition, offset, outcomes in chunks:
        for o in outcomes:
            label, vendor = o.policy_label, o.vendor_id
            grouped.setdefault((label, vendor), []).append((partition, offset, o.t_ms, o.is_error, o.error_type))
            wider.setdefault((label, WILDCARD), []).append(
                (partition, offset, o.t_ms, o.is_error, o.error_type, vendor)
            )
            wider.setdefault((WILDCARD, vendor), []).append(
                (partition, offset, o.t_ms, o.is_error, o.error_type, label)
            )
    for partition, offset, ratings in scored:
        for r in ratings:
            grouped.setdefault((REVIEWER_LABEL, r.reviewer_id), []).append((partition, offset, r.t_ms, r.disagrees, 0))
    out = {pair_key(*pair): _msgpack.encode(OutcomeBatch(items, head_ms)) for pair, items in grouped.items()}
    out.update({pair_key(*key): _msgpack.encode(ScopeOutcomes(items, head_ms)) for key, items in wider.items()})
    return out
