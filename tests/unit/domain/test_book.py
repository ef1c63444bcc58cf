"""The rate book: counts reach the database once by offset, whatever a crash interrupts.

The protocol is simulated with its durable parts as plain lists and dicts (the changelog, the
database's rows and ``applied_to``, the committed offset) and the scorer's real pure parts
(``score_batch``, ``RateBook``, ``PartitionBook.recover``). A run crashes at random points, loses
everything not durable, recovers as the events stage does and goes on; at the end the database
must hold exactly the counts of one clean pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.contracts.batches import WireAppeal, WireDecision, WireEvent, WireVerdict
from services.contracts.facts import AppealFact
from services.domain.book import (
    BookWrite,
    Facts,
    PartitionBook,
    RateBook,
    book_key,
    book_offset,
    decode_record,
    decode_rows,
    encode_rows,
)
from services.domain.join import Deltas, score_batch
from services.domain.rates import BucketKey, Counts

MINUTE = 60_000
T0 = 1_795_000_000_000


def row(verdicts: int, weighted: float = 0.0) -> Counts:
    return Counts(verdicts=verdicts, weighted_verdicts=weighted)


def test_book_rows_round_trip_through_a_record() -> None:
    rows = {("ip.trademark/counterfeit", "V|1", "DE", T0): row(3, 1.25), ("a", "b", "c", T0 + MINUTE): row(1)}
    assert decode_rows(encode_rows(rows)) == rows
    fact = AppealFact("p1", "d1", "a", "b", "DE", "", "ARTICLE_20", 1, T0, 0, 0, T0)
    assert decode_record(encode_rows(rows, {fact.key: fact})) == (rows, {fact.key: fact})
    assert decode_record(encode_rows(rows)) == (rows, {})  # a record without facts: the plain list
    assert book_offset(book_key(12_345)) == 12_345 and book_offset(b"decision-1") is None


def deltas_of(rows: dict[BucketKey, Counts]) -> Deltas:
    d = Deltas()
    d.buckets = {k: v.copy() for k, v in rows.items()}
    return d


def test_a_write_covers_the_rows_up_to_its_offset_and_its_records_are_tombstoned_once_written() -> None:
    book = RateBook()
    key = ("L", "V", "DE", T0)
    record = book.apply(0, deltas_of({key: row(2)}), through=10)
    assert record is not None and decode_rows(record) == {key: row(2)}
    book.apply(0, deltas_of({key: row(1)}), through=20)
    book.apply(1, Deltas(), through=5)  # nothing to count: no book record, but counted up to 5
    assert book.counted_to(0) == 20 and book.counted_to(1) == 5
    write = book.take()
    assert write is not None and write.parts == {0: ({key: row(3)}, 20)}
    assert book.take_tombstones(0) == []  # not before the database has them
    book.apply(0, deltas_of({key: row(4)}), through=30)
    book.written(write)
    assert book.take_tombstones(0) == [book_key(10), book_key(20)]
    assert book.part(0).live == [30] and book.pending_rows() == 1


def test_a_failed_write_goes_again_as_it_was_and_later_changes_wait_for_the_next() -> None:
    book = RateBook()
    key = ("L", "V", "DE", T0)
    book.apply(0, deltas_of({key: row(1)}), through=10)
    first = book.take()
    assert first is not None
    book.apply(0, deltas_of({key: row(5)}), through=20)
    book.failed(first)
    again = book.take()
    assert again is first and again.parts == {0: ({key: row(1)}, 10)}  # whole, under its offset
    book.written(again)
    following = book.take()
    assert following is not None and following.parts == {0: ({key: row(5)}, 20)}


def test_a_recovered_book_holds_the_records_the_database_lacks() -> None:
    a, b = ("L", "V", "DE", T0), ("L", "V", "FR", T0)
    records = {10: ({a: row(1)}, {}), 20: ({a: row(2), b: row(1)}, {}), 30: ({b: row(5)}, {})}
    book = PartitionBook.recover(records, applied_to=20)
    assert book.rows == {b: row(5)} and book.through == 30 and book.counted_to == 30
    rate = RateBook()
    rate.install(0, book)
    assert rate.take_tombstones(0) == [book_key(10), book_key(20)]  # the database has those
    nothing = PartitionBook.recover({}, applied_to=40)
    assert nothing.rows == {} and nothing.counted_to == 40


def test_installing_a_recovered_book_takes_its_partition_out_of_a_failed_write() -> None:
    rate = RateBook()
    key = ("L", "V", "DE", T0)
    rate.apply(0, deltas_of({key: row(1)}), through=10)
    rate.apply(1, deltas_of({key: row(7)}), through=10)
    write = rate.take()
    assert write is not None
    rate.failed(write)
    rate.install(0, PartitionBook.recover({10: ({key: row(1)}, {})}, applied_to=0))  # partition 0 re-read
    again = rate.take()
    assert again is not None and set(again.parts) == {1}
    assert rate.part(0).rows == {key: row(1)}  # counted once: by the recovered book, not the old write


# -- the whole protocol, crashed at random points --------------------------------------------


def make_records(seed: int, n: int) -> list[list[WireEvent]]:
    """Batches of events on one partition: decisions, verdicts (some superseding), appeals,
    redeliveries, verdicts before their decisions."""
    rng = random.Random(seed)
    events: list[WireEvent] = []
    for i in range(n):
        did = f"d{i}"
        t = T0 + i * 7_000
        label, vendor = rng.choice(["L1", "L2"]), rng.choice(["V1", "V2", "V3"])
        decision = WireDecision(f"e{i}", did, t, label, vendor, "DE", "", "", 0)
        if rng.random() < 0.5:
            err = rng.random() < 0.2
            verdict = WireVerdict(f"v{i}", did, t + 1000, f"r{i}", int(err), int(err), "", 2.0)
            pair: list[WireEvent] = [verdict, decision] if rng.random() < 0.2 else [decision, verdict]
            events.extend(pair)
            if rng.random() < 0.1:
                events.append(WireVerdict(f"v{i}b", did, t + 2000, f"r{i}b", 1, 2, f"r{i}", 2.0))
        else:
            events.append(decision)
            if rng.random() < 0.2:  # a calibration by another reviewer, or an audit: a review item
                tier = rng.choice((1, 2))
                events.append(WireVerdict(f"c{i}", did, t + 1500, f"c{i}", 0, 0, "", 1.0, "qa-2", tier))
        if rng.random() < 0.1:
            events.append(WireAppeal(f"a{i}", did, t + 3000, f"p{i}", 1, t + 2500, t + 3000, "ARTICLE_20"))
        if rng.random() < 0.05:
            events.append(decision)  # redelivered
    sizes = [rng.randint(1, 9) for _ in range(len(events))]
    out, i = [], 0
    for size in sizes:
        if i >= len(events):
            break
        out.append(events[i : i + size])
        i += size
    return out


def totals(rows: dict[BucketKey, Counts]) -> dict[BucketKey, Counts]:
    return {k: v for k, v in rows.items() if any(v.values())}


@dataclass
class Durable:
    """What survives a crash: the changelog, the database, the committed offset."""

    changelog: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    db_rows: dict[BucketKey, Counts] = field(default_factory=dict)
    db_facts: Facts = field(default_factory=dict)
    applied_to: int = 0
    committed: int = 0


class Crash(Exception):
    pass


class Worker:
    """One process of the events stage on one partition, over ``Durable``."""

    def __init__(self, durable: Durable, rng: random.Random, crash_rate: float) -> None:
        self.d, self.rng, self.crash_rate = durable, rng, crash_rate
        self.state: dict[bytes, bytes] = {}
        self.book = RateBook()
        records: dict[int, tuple[dict[BucketKey, Counts], Facts]] = {}
        for key, value in durable.changelog:
            if (through := book_offset(key)) is not None:
                if value is None:
                    records.pop(through, None)
                else:
                    records[through] = decode_record(value)
            elif value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value
        self.book.install(0, PartitionBook.recover(records, durable.applied_to))
        self.position = durable.committed

    def maybe_crash(self) -> None:
        if self.rng.random() < self.crash_rate:
            raise Crash

    def round(self, records: list[list[WireEvent]]) -> None:
        start = self.position
        deltas, writes = Deltas(), {}
        for offset in range(start, start + len(records)):
            into = Deltas() if offset < self.book.counted_to(0) else deltas
            changed, _ = score_batch(records[offset - start], lambda k: writes.get(k, self.state.get(k)), into=into)
            writes.update(changed)
        through = start + len(records)
        record = self.book.apply(0, deltas, through)
        self.state.update(writes)
        self.position = through
        self.maybe_crash()
        if record is not None:  # the book record first, then the state records, a few at a time, then the commit
            self.d.changelog.append((book_key(through), record))
        self.maybe_crash()
        items = list(writes.items()) + [(k, None) for k in self.book.take_tombstones(0)]
        for i in range(0, len(items), 3):
            self.d.changelog.extend(items[i : i + 3])
            self.maybe_crash()
        self.d.committed = through
        self.maybe_crash()

    def flush(self) -> None:
        write = self.book.take()
        if write is None:
            return
        self.maybe_crash()
        if self.rng.random() < 0.2:  # the database fails, having applied the write or not
            if self.rng.random() < 0.5:
                apply(self.d, write)
            self.book.failed(write)
            return
        apply(self.d, write)
        self.maybe_crash()  # committed, but its acknowledgement lost
        self.book.written(write)


def apply(d: Durable, write: BookWrite) -> None:
    """The database's side of a write: a partition's rows only if ``applied_to`` is below its offset."""
    for p, (rows, through) in write.parts.items():
        if d.applied_to < through:
            for key, counts in rows.items():
                d.db_rows.setdefault(key, Counts()).add(counts)
            d.db_facts.update(write.facts.get(p, {}))
            d.applied_to = through


def run_to_the_end(records: list[list[WireEvent]], seed: int, crash_rate: float) -> tuple[Durable, int]:
    d, rng, crashes = Durable(), random.Random(seed), 0
    worker = Worker(d, rng, crash_rate)
    while True:
        try:
            while worker.position < len(records):
                n = rng.randint(1, 6)
                worker.round(records[worker.position : worker.position + n])
                if rng.random() < 0.5:
                    worker.flush()
            worker.crash_rate = 0.0
            while worker.book.pending_rows():
                worker.flush()
            return d, crashes
        except Crash:
            crashes += 1
            worker = Worker(d, rng, crash_rate)  # a new process: only what was durable is left


def test_crashes_anywhere_leave_the_database_with_exactly_the_counts_of_a_clean_run() -> None:
    crashed_runs = 0
    for seed in range(60):
        records = make_records(seed, 120)
        clean, _ = run_to_the_end(records, seed, crash_rate=0.0)
        crashed, crashes = run_to_the_end(records, seed + 1000, crash_rate=0.08)
        assert totals(crashed.db_rows) == totals(clean.db_rows), f"seed {seed}, {crashes} crashes"
        assert crashed.db_facts == clean.db_facts and clean.db_facts, f"seed {seed}: facts"
        crashed_runs += crashes > 0
    assert crashed_runs >= 55  # the crashes happened


def test_without_the_counted_offset_a_replay_would_count_twice() -> None:
    """The same crashes with replayed records' changes counted again: the database is wrong, so
    the test above can fail."""
    import services.domain.book as book_module

    records = make_records(3, 120)
    clean, _ = run_to_the_end(records, 3, crash_rate=0.0)
    original = book_module.PartitionBook.recover

    def forgetful(records: dict[int, tuple[dict[BucketKey, Counts], Facts]], applied_to: int) -> PartitionBook:
        book = original(records, applied_to)
        book.counted_to = 0  # replayed records count again
        return book

    book_module.PartitionBook.recover = forgetful  # type: ignore[method-assign]
    try:
        crashed, crashes = run_to_the_end(records, 1003, crash_rate=0.08)
    finally:
        book_module.PartitionBook.recover = original  # type: ignore[method-assign]
    assert crashes > 0 and totals(crashed.db_rows) != totals(clean.db_rows)
