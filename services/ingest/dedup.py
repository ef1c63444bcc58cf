"""A bounded, insertion-ordered set of recently seen event ids (first line of deduplication).

The scorer's per-decision state is what makes counting idempotent; this cache only spares it
the obvious redeliveries. Pure, no I/O.
"""

from __future__ import annotations


class RecentIds:
    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def seen(self, event_id: str) -> bool:
        """True if event_id was seen recently; otherwise remember it and return False."""
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]
        return False

    def __len__(self) -> int:
        return len(self._ids)
