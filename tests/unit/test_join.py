"""Join order, redelivery and superseding on the pure decision-state core."""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec
import orjson

from services.common.events import EVENT_TYPES
from services.common.wire import WireEvent, decode_batch, encode_batch, encode_event
from services.scorer.pipeline import BookKey, BookWrite, score_batch
from services.scorer.rates import (
    COUNT_FIELDS,
    F_APPEALS,
    F_DECISIONS,
    F_ERRORS,
    F_OVER,
    F_OVERTURNED,
    F_VERDICTS,
    Counts,
    add_into,
    zero_counts,
)
from tests import factories


def wire(kind: str, doc: dict[str, object]) -> WireEvent:
    return encode_event(msgspec.json.decode(orjson.dumps(doc), type=EVENT_TYPES[kind]))


def run(events: list[WireEvent], batch_size: int = 3) -> tuple[dict[tuple[str, str, str], list[float]], list[bool]]:
    """Feed events in batches through the pipeline; totals per (label, vendor, market) and detector feed."""
    store: dict[bytes, bytes] = {}
    totals: dict[tuple[str, str, str], list[float]] = {}
    fed: list[bool] = []
    for i in range(0, len(events), batch_size):
        batch = decode_batch(encode_batch(events[i : i + batch_size]))
        writes, deltas = score_batch(batch, store.get)
        store.update(writes)
        for (label, vendor, market, _), delta in deltas.rows().items():
            row = totals.setdefault((label, vendor, market), [0.0] * len(COUNT_FIELDS))
            for j, v in enumerate(delta):
                row[j] += v
        fed.extend(o.is_error for o in deltas.outcomes)
    return totals, fed


KEY = ("SCAMS_AND_FRAUD", "V01", "DE")


def test_verdict_before_decision_is_joined_when_the_decision_arrives() -> None:
    totals, fed = run(
        [wire("verdict", factories.verdict("d1", error=True)), wire("decision", factories.decision("d1"))], 1
    )
    row = totals[KEY]
    assert (row[F_DECISIONS], row[F_VERDICTS], row[F_ERRORS], row[F_OVER]) == (1, 1, 1, 1)
    assert fed == [True]


def test_verdict_after_decision_counts_once() -> None:
    totals, fed = run([wire("decision", factories.decision("d1")), wire("verdict", factories.verdict("d1"))])
    assert (totals[KEY][F_VERDICTS], totals[KEY][F_ERRORS]) == (1, 0)
    assert fed == [False]


def test_redelivered_events_count_once() -> None:
    d, v, a = factories.decision("d1"), factories.verdict("d1", error=True), factories.appeal("d1")
    events = [wire("decision", d), wire("verdict", v), wire("appeal", a)] * 3
    totals, fed = run(events, 2)
    row = totals[KEY]
    assert (row[F_DECISIONS], row[F_VERDICTS], row[F_ERRORS], row[F_APPEALS], row[F_OVERTURNED]) == (1, 1, 1, 1, 1)
    assert fed == [True]


def test_superseding_verdict_replaces_the_earlier_one_in_either_order() -> None:
    first = factories.verdict("d1", error=True, verdict_id="v1", event_id="e1")
    second = factories.verdict(
        "d1", error=False, verdict_id="v2", event_id="e2", supersedes_verdict_id="v1", event_time=factories.ts(30)
    )
    for order in ([first, second], [second, first]):
        totals, _ = run([wire("decision", factories.decision("d1"))] + [wire("verdict", v) for v in order], 1)
        assert (totals[KEY][F_VERDICTS], totals[KEY][F_ERRORS]) == (1, 0), order


def test_appeal_before_decision_is_counted_on_join() -> None:
    totals, _ = run([wire("appeal", factories.appeal("d1", "UPHELD")), wire("decision", factories.decision("d1"))], 1)
    assert (totals[KEY][F_APPEALS], totals[KEY][F_OVERTURNED]) == (1, 0)


def test_shuffled_and_duplicated_stream_gives_the_same_counts() -> None:
    rng = random.Random(3)
    events: list[WireEvent] = []
    for n in range(300):
        did = f"d{n}"
        events.append(wire("decision", factories.decision(did, vendor_id=f"V0{n % 3}")))
        if n % 2:
            events.append(wire("verdict", factories.verdict(did, error=n % 7 == 0)))
        if n % 11 == 0:
            events.append(
                wire(
                    "verdict",
                    factories.verdict(
                        did, error=True, verdict_id=f"late-{did}", event_id=f"le-{did}", event_time=factories.ts(600)
                    ),
                )
            )
        if n % 5 == 0:
            events.append(wire("appeal", factories.appeal(did)))
    clean, _ = run(events, 50)
    noisy = events * 2
    rng.shuffle(noisy)
    shuffled, _ = run(noisy, 37)
    assert shuffled == clean


def test_rate_book_rebuilt_from_decision_states_equals_the_incremental_one() -> None:
    from services.common.wire import partition_for
    from services.scorer.pipeline import RateBook

    rng = random.Random(5)
    events: list[WireEvent] = []
    for n in range(400):
        did = f"d{n}"
        events.append(wire("decision", factories.decision(did, market=rng.choice(["DE", "FR"]))))
        events.append(
            wire("verdict", factories.verdict(did, error=n % 9 == 0, event_time=factories.ts(rng.randrange(3600))))
        )
        if n % 13 == 0:
            events.append(wire("appeal", factories.appeal(did)))
    rng.shuffle(events)
    stores: dict[int, dict[bytes, bytes]] = {0: {}, 1: {}}
    live = RateBook()
    for i in range(0, len(events), 25):
        for p in (0, 1):
            batch = [e for e in events[i : i + 25] if partition_for(e.decision_id, 2) == p]
            writes, deltas = score_batch(batch, stores[p].get)
            stores[p].update(writes)
            live.apply(p, deltas)
    rebuilt = RateBook()
    rebuilt.rebuild(stores, lambda _: ((p, raw) for p, store in stores.items() for raw in store.values()))
    assert not rebuilt.pending and rebuilt.resets == {0: 0, 1: 0}  # the first write replaces their buckets
    write = rebuilt.take()
    assert write is not None and write.rebuild is not None
    assert rebuild_rows(write) == {k: v for k, v in live.pending.items() if any(v)}


def rebuild_rows(write: BookWrite) -> dict[BookKey, Counts]:
    """A rebuild's rows summed over its chunks (keys may repeat across chunks: they add up)."""
    assert write.rebuild is not None
    rows: dict[BookKey, Counts] = {}
    for chunk in write.rebuild.steps:
        for key, counts in (chunk or {}).items():
            add_into(rows.setdefault(key, zero_counts()), counts)
    return rows


def test_touched_ms_read_off_the_end_equals_the_decoded_field() -> None:
    from services.scorer.join import CurrentVerdict, DecisionAttrs, DecisionState, encode_state, touched_ms

    for t in (0, 1, 127, 70_000, 2**32 + 5, 1_795_000_000_000):
        for state in (
            DecisionState(touched_ms=t),
            DecisionState(DecisionAttrs("L", "V", "DE", t), None, None, t),
            DecisionState(None, CurrentVerdict("v", 1, 2, t, 1.0, ""), {"a": (1, t)}, t),
        ):
            assert touched_ms(encode_state(state)) == t


def test_book_keeps_closed_buckets_out_of_rebuilds_and_changes() -> None:
    """Buckets before the horizon are closed: a rebuild leaves them out and late changes are
    dropped; the book holds only changes not yet written, and a rebuild's open buckets equal the
    sum of everything applied to them."""
    from services.scorer.join import decode_state
    from services.scorer.pipeline import RateBook
    from services.scorer.rates import BUCKET_MS

    events = [wire("decision", factories.decision(f"d{i}", event_time=factories.ts(i * 60))) for i in range(40)]
    store: dict[bytes, bytes] = {}
    book = RateBook()
    writes, deltas = score_batch(decode_batch(encode_batch(events)), store.get)
    store.update(writes)
    book.apply(0, deltas)
    starts = sorted({k[4] for k in book.pending})
    first = book.take()
    assert first is not None and not book.pending and book.take() is None
    assert book.unwritten_from(0) == starts[0]  # in flight until the write is confirmed
    book.written(first)
    assert book.unwritten_from(0) is None
    horizon = starts[len(starts) // 2]
    book.close_before(0, horizon)
    book.close_before(0, horizon - BUCKET_MS)  # never moves back
    book.apply(0, deltas)  # changes to both closed and open buckets
    assert book.ignored == sum(1 for k in deltas.decisions if k[3] < horizon)
    assert {k[4] for k in book.pending} == {s for s in starts if s >= horizon}
    book.rebuild([0], lambda _: ((0, raw) for raw in store.values()))
    assert book.resets == {0: horizon} and book.unwritten_from(0) == horizon
    rebuilt = book.take()
    assert rebuilt is not None
    assert rebuild_rows(rebuilt) == {
        k: v for k, v in first.rows.items() if k[4] >= horizon
    }  # the rebuild's counts are whole: once each decision
    assert all(decode_state(raw).attrs is not None for raw in store.values())


def test_a_failed_book_write_goes_again_as_it_was_unless_a_rebuild_replaced_it() -> None:
    """A write that failed may have been applied: it is retried whole under its number (the
    database skips a number it has), changes made meanwhile go in the next write; a rebuild
    replaces a failed write, and a failed rebuild starts again from a new view of the state."""
    from services.scorer.pipeline import RateBook

    events = [wire("decision", factories.decision(f"d{i}", event_time=factories.ts(i * 60))) for i in range(8)]
    store: dict[bytes, bytes] = {}
    book = RateBook()

    def apply(batch: list[WireEvent]) -> None:
        writes, deltas = score_batch(decode_batch(encode_batch(batch)), store.get)
        store.update(writes)
        book.apply(0, deltas)

    apply(events[:3])
    first = book.take()
    assert first is not None and first.seq == 1
    apply(events[3:6])
    book.failed(first)
    assert book.pending_rows() == 6
    again = book.take()
    assert again is first  # same rows, same number
    book.written(again)
    second = book.take()
    assert second is not None and second.seq == 2 and len(second.rows) == 3
    book.failed(second)
    views = 0

    def view(_: frozenset[int]) -> Iterator[tuple[int, bytes]]:
        nonlocal views
        views += 1
        return iter([(0, raw) for raw in store.values()])  # taken now, as a store's snapshot is

    book.rebuild([0], view)
    apply(events[6:7])  # after the view: a change on top of it
    rebuilt = book.take()
    assert rebuilt is not None and rebuilt.seq == 3 and rebuilt.resets == {0: 0} and len(rebuilt.rows) == 1
    assert len(rebuild_rows(rebuilt)) == 6 and views == 1
    book.failed(rebuilt)  # its view is consumed: a new one, which holds the change made since
    apply(events[7:])
    retried = book.take()
    assert retried is not None and retried.seq == 4 and retried.resets == {0: 0} and len(retried.rows) == 1
    assert len(rebuild_rows(retried)) == 7 and views == 2
    book.written(retried)
    assert book.take() is None and book.unwritten_from(0) is None


def test_an_abandoned_rebuild_stops_and_holds_writes_until_the_next_one() -> None:
    """When the partitions' state is closed or re-read, a rebuild being written stops at its next
    step, and nothing is written until the state is rebuilt (pending changes lack their base)."""
    import pytest

    from services.scorer import pipeline
    from services.scorer.pipeline import RateBook, RebuildSuperseded

    events = [wire("decision", factories.decision(f"d{i}")) for i in range(5)]
    store: dict[bytes, bytes] = {}
    writes, _ = score_batch(decode_batch(encode_batch(events)), store.get)
    store.update(writes)
    book = RateBook()
    book.rebuild([0], lambda _: iter([(0, raw) for raw in store.values()] * pipeline.REBUILD_STEP_RECORDS))
    write = book.take()
    assert write is not None and write.rebuild is not None
    assert next(write.rebuild.steps) is None  # one step of records read
    book.hold()
    with pytest.raises(RebuildSuperseded):
        next(write.rebuild.steps)
    book.failed(write)
    book.apply(0, score_batch(decode_batch(encode_batch(events)), {}.get)[1])
    assert book.take() is None and book.unwritten_from(0) == 0  # held: nothing closes meanwhile
    book.rebuild([0], lambda _: iter([(0, raw) for raw in store.values()]))
    again = book.take()
    assert again is not None and again.generation > write.generation and len(rebuild_rows(again)) == 1
