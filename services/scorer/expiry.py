"""Decision state expires on event time: per partition a watermark (the newest event time in its
state) and the cutoff of its last sweep."""

from __future__ import annotations

import logging
from typing import Any

from services.domain.join import expired, touched_ms
from services.scorer.stores import PartitionStates

log = logging.getLogger("modq.scorer.stage")

SWEPT_KEY = b"\x00modq:swept"  # changelog record: the partition's state-expiry cutoff (not a decision)


class Expiry:
    """A decision's state expires ``retention_ms`` (event time) after its newest event, measured
    against its partition's watermark. The rate buckets it counted in keep their counts (they are
    in the database or in the book)."""

    def __init__(self, retention_ms: int, expired_counter: Any) -> None:
        self.retention_ms = retention_ms
        self.expired_counter = expired_counter
        self.watermark: dict[int, int] = {}
        self.swept: dict[int, int] = {}

    def see(self, p: int, values: Any) -> None:
        """Advance the partition's watermark past the encoded states ``values`` (None: a tombstone)."""
        newest = max((touched_ms(raw) for raw in values if raw is not None), default=0)
        self.watermark[p] = max(newest, self.watermark.get(p, 0))

    def cutoff(self, p: int) -> int | None:
        """The cutoff a sweep of the partition would use now; None when none is due. A sweep scans
        the whole partition, so it runs only once the cutoff can move by a twentieth of the
        retention."""
        watermark = self.watermark.get(p)
        if watermark is None:
            return None
        cutoff = watermark - self.retention_ms
        last = self.swept.get(p)
        if last is not None and cutoff - last < max(self.retention_ms // 20, 60_000):
            return None
        if cutoff <= 0 or (last is not None and cutoff <= last):
            return None
        return cutoff

    def sweep(self, p: int, states: PartitionStates, writes: dict[bytes, bytes | None]) -> None:
        """Advance the watermark by this round's ``writes`` and, when due, expire old state: the
        tombstones for the expired keys go out in this round, with the cutoff (``SWEPT_KEY``), so
        that a recovery does not sweep again at once."""
        self.see(p, writes.values())
        cutoff = self.cutoff(p)
        if cutoff is None:
            return
        self.swept[p] = cutoff
        gone = expired(states.items(), cutoff)
        tombstones: dict[bytes, bytes | None] = dict.fromkeys(gone)
        states.write(tombstones)
        writes.update(tombstones)
        writes[SWEPT_KEY] = cutoff.to_bytes(8, "big")
        self.expired_counter.inc(len(gone))
        log.info("state expired", extra={"partition": p, "decisions": len(gone), "cutoff_ms": cutoff})

    def forget(self, p: int) -> None:
        self.watermark.pop(p, None)
        self.swept.pop(p, None)
