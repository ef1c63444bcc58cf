"""The rate book: bucket-count changes of the partitions a worker owns, on their way to the database. Pure.

Counts reach the database exactly once without a rebuild, by the events-topic offset they come
from. Each round of records a worker applies writes, before any of its decision-state records, a
*book record* to the decision changelog: the round's bucket changes for the partition, keyed by
the offset just past the round's last record. The database keeps, per partition, the offset its
counts go up to (``bucket_owners.applied_to``), raised in the same transaction as the counts. So
whatever a crash interrupts:

- changes in the database are those below ``applied_to``;
- changes of rounds whose book record is on the changelog but not in the database are read back
  from those records on recovery (``PartitionBook.recover``);
- a record replayed below either bound (its round's state may be durable, or not yet) changes
  decision state only, its bucket changes are dropped (``counted_to``): they are counted already.

Book records are tombstoned once the database has them. The rows themselves have no partition
column: a worker's writes add to rows shared with other workers' partitions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from services.contracts.facts import Fact
from services.domain.join import Deltas
from services.domain.rates import BucketKey, Counts

BOOK_KEY_PREFIX: Final = b"\x00modq:book:"
"""Changelog key of a book record: this prefix and the big-endian offset the round goes up to."""

_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[tuple[tuple[str, str, str, int], Counts]])
Facts = dict[tuple[str, str], Fact]
"""Facts by key (``Fact.key``): a later one of a key replaces an earlier one."""


class BookRecord(msgspec.Struct):
    """A book record with facts (a msgpack map); one without them is the plain list of rows."""

    rows: list[tuple[tuple[str, str, str, int], Counts]]
    facts: list[Fact]


_record_decoder = msgspec.msgpack.Decoder(BookRecord)


def book_key(through: int) -> bytes:
    return BOOK_KEY_PREFIX + through.to_bytes(8, "big")


def book_offset(key: bytes) -> int | None:
    """The offset of a book record's key; None for any other key."""
    if not key.startswith(BOOK_KEY_PREFIX):
        return None
    return int.from_bytes(key[len(BOOK_KEY_PREFIX) :], "big")


def encode_rows(rows: Mapping[BucketKey, Counts], facts: Facts | None = None) -> bytes:
    """A book record's value: the rows as msgpack pairs of (key, counts), with the round's facts
    (a ``BookRecord``) when it has any."""
    if not facts:
        return _rows_encoder.encode(list(rows.items()))
    return _rows_encoder.encode(BookRecord(list(rows.items()), list(facts.values())))


def decode_rows(raw: bytes) -> dict[BucketKey, Counts]:
    return decode_record(raw)[0]


def decode_record(raw: bytes) -> tuple[dict[BucketKey, Counts], Facts]:
    """A book record's rows and facts (records written before facts existed are a plain list)."""
    if raw and (0x80 <= raw[0] <= 0x8F or raw[0] in (0xDE, 0xDF)):  # a msgpack map: a BookRecord
        record = _record_decoder.decode(raw)
        return dict(record.rows), {f.key: f for f in record.facts}
    return dict(_rows_decoder.decode(raw)), {}


def round_rows(deltas: Deltas) -> dict[BucketKey, Counts]:
    """A round's bucket changes as full rows (decision counts folded in)."""
    return deltas.rows()


class PartitionBook:
    """One partition's changes not yet in the database, and the book records that hold them."""

    __slots__ = ("applied_to", "counted_to", "facts", "live", "rows", "through")

    def __init__(self, applied_to: int = 0) -> None:
        self.rows: dict[BucketKey, Counts] = {}
        self.facts: Facts = {}
        self.applied_to = applied_to  # the database has the changes of records below this offset
        self.through = applied_to  # rows hold the changes of records below this offset (and above applied_to)
        self.counted_to = applied_to  # records below this offset are counted, in ``rows`` or in the database
        self.live: list[int] = []  # offsets of book records on the changelog not yet tombstoned

    def add(
        self, rows: Mapping[BucketKey, Counts], through: int, starts: dict[int, int], facts: Facts | None = None
    ) -> None:
        if facts:
            self.facts.update(facts)
        own = self.rows
        for key, delta in rows.items():
            row = own.get(key)
            if row is None:
                label, vendor, market, start = key
                # One string object per label and one int per minute across the book's rows.
                key = (sys.intern(label), sys.intern(vendor), sys.intern(market), starts.setdefault(start, start))
                row = own[key] = Counts()
            row.add(delta)
        self.through = max(self.through, through)
        self.counted_to = max(self.counted_to, through)

    @classmethod
    def recover(cls, records: Mapping[int, tuple[Mapping[BucketKey, Counts], Facts]], applied_to: int) -> PartitionBook:
        """The book of a partition read back from its changelog: ``records`` are its live book
        records (rows and facts) by offset, ``applied_to`` the database's offset for it."""
        book, starts = cls(applied_to), dict[int, int]()
        for through in sorted(records):
            if through > applied_to:
                rows, facts = records[through]
                book.add(rows, through, starts, facts)
        book.live = sorted(records)  # those the database has already are tombstoned on ``install``
        return book


@dataclass(slots=True)
class BookWrite:
    """One write of the book to the database, applied whole and at most once.

    Per partition, the rows to add and the offset they go up to: the database adds a partition's
    rows only if its ``applied_to`` is below that offset (else they are in already: a write
    retried after a lost acknowledgement), and only while this writer owns the partition.
    """

    parts: dict[int, tuple[dict[BucketKey, Counts], int]] = field(default_factory=dict)
    facts: dict[int, Facts] = field(default_factory=dict)  # per partition, upserted with its rows

    def row_count(self) -> int:
        return sum(len(rows) for rows, _ in self.parts.values()) + sum(len(f) for f in self.facts.values())


class RateBook:
    """The books of the partitions this worker owns, and the database write in flight."""

    def __init__(self) -> None:
        self.parts: dict[int, PartitionBook] = {}
        self._starts: dict[int, int] = {}
        self._in_flight: BookWrite | None = None
        self._failed: BookWrite | None = None  # to be written again exactly as it was
        self.tombstones: dict[int, list[bytes]] = {}  # book-record keys to delete, by partition

    def part(self, partition: int) -> PartitionBook:
        book = self.parts.get(partition)
        if book is None:
            book = self.parts[partition] = PartitionBook()
        return book

    def counted_to(self, partition: int) -> int:
        book = self.parts.get(partition)
        return book.counted_to if book is not None else 0

    def apply(self, partition: int, deltas: Deltas, through: int) -> bytes | None:
        """Add a round's changes of a partition (its records go up to ``through``); returns the
        round's book record (None: nothing to count)."""
        rows = round_rows(deltas)
        book = self.part(partition)
        if rows or deltas.facts:
            book.add(rows, through, self._starts, deltas.facts)
            book.live.append(through)
            return encode_rows(rows, deltas.facts)
        book.counted_to = max(book.counted_to, through)
        return None

    def install(self, partition: int, book: PartitionBook) -> None:
        """A partition's book after a recovery; whatever this worker held for it is superseded,
        so it leaves a write still to be retried too."""
        self.parts[partition] = book
        self.tombstones.pop(partition, None)
        self._forget_in_writes(partition)
        self._tombstone(partition, book.applied_to)

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions that left: their books go (their new owner reads the book records back)."""
        for p in partitions:
            self.parts.pop(p, None)
            self.tombstones.pop(p, None)
            self._forget_in_writes(p)

    def _forget_in_writes(self, partition: int) -> None:
        for write in (self._failed, self._in_flight):
            if write is not None:
                write.parts.pop(partition, None)
                write.facts.pop(partition, None)

    def take(self) -> BookWrite | None:
        """The next write: a failed one again as it was, else every partition's pending rows
        (None: nothing to write). Its rows count as unwritten until ``written``."""
        write = self._failed
        self._failed = None
        if write is None or not write.parts:
            write = BookWrite()
            for p, book in self.parts.items():
                if book.rows or book.facts:
                    write.parts[p] = (book.rows, book.through)
                    book.rows = {}
                if book.facts:
                    write.facts[p] = book.facts
                    book.facts = {}
            if not write.parts:
                return None
            if len(self._starts) > 100_000:
                self._starts = {}  # minutes seen (a few hundred a day): forgotten now and then
        self._in_flight = write
        return write

    def written(self, write: BookWrite) -> None:
        """The write is in the database (or was already, or its partitions moved): the book
        records it covers can go."""
        if self._in_flight is write:
            self._in_flight = None
        for p, (_, through) in write.parts.items():
            if p in self.parts:
                self.parts[p].applied_to = max(self.parts[p].applied_to, through)
                self._tombstone(p, through)

    def failed(self, write: BookWrite) -> None:
        """The write may or may not be in the database: it goes again, whole."""
        if self._in_flight is write:
            self._in_flight = None
        self._failed = write

    def _tombstone(self, partition: int, through: int) -> None:
        book = self.parts[partition]
        gone = [t for t in book.live if t <= through]
        if gone:
            book.live = [t for t in book.live if t > through]
            self.tombstones.setdefault(partition, []).extend(book_key(t) for t in gone)

    def take_tombstones(self, partition: int) -> list[bytes]:
        return self.tombstones.pop(partition, [])

    def pending_rows(self) -> int:
        """Changed rows not yet in the database."""
        held = sum(len(b.rows) + len(b.facts) for b in self.parts.values())
        return held + sum(w.row_count() for w in (self._in_flight, self._failed) if w is not None)
