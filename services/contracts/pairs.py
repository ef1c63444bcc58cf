"""The pair-outcomes topic: judged verdicts grouped by (policy_label, vendor_id), from the events
stage to the detection stage, and operators' re-baseline requests on the same key.

Key: msgpack ``(policy_label, vendor_id)``. Value: msgpack ``OutcomeBatch`` or ``Rebaseline``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import msgspec

_msgpack = msgspec.msgpack.Encoder()
_pair_key_decoder = msgspec.msgpack.Decoder(tuple[str, str])


def pair_key(policy_label: str, vendor_id: str) -> bytes:
    """Kafka key of a (policy_label, vendor_id) pair on the pair-outcomes topic."""
    return _msgpack.encode((policy_label, vendor_id))


def decode_pair_key(raw: bytes) -> tuple[str, str]:
    return _pair_key_decoder.decode(raw)


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


PairMessage = OutcomeBatch | Rebaseline
_message_decoder: msgspec.msgpack.Decoder[OutcomeBatch | Rebaseline] = msgspec.msgpack.Decoder(
    OutcomeBatch | Rebaseline
)


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


def group_outcomes(chunks: Iterable[tuple[int, int, Iterable[PairVerdict]]], head_ms: int = 0) -> dict[bytes, bytes]:
    """Judged verdicts grouped by pair: key ``pair_key``, value an encoded ``OutcomeBatch``.

    ``chunks`` are (source partition, source offset, outcomes of the record there), in the order
    they were applied (each partition's in offset order).
    """
    grouped: dict[tuple[str, str], list[tuple[int, int, int, bool, int]]] = {}
    for partition, offset, outcomes in chunks:
        for o in outcomes:
            grouped.setdefault((o.policy_label, o.vendor_id), []).append(
                (partition, offset, o.t_ms, o.is_error, o.error_type)
            )
    return {pair_key(*pair): _msgpack.encode(OutcomeBatch(items, head_ms)) for pair, items in grouped.items()}
