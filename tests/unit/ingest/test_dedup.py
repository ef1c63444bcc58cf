"""The ingest's recent-id cache: bounded, forgets the oldest first."""

from __future__ import annotations

from services.ingest.dedup import RecentIds


def test_a_repeat_is_seen_and_a_new_id_is_not() -> None:
    ids = RecentIds(3)
    assert ids.seen("a") is False
    assert ids.seen("a") is True
    assert ids.seen("b") is False
    assert len(ids) == 2


def test_the_oldest_id_is_forgotten_first_and_the_size_stays_bounded() -> None:
    ids = RecentIds(3)
    for event_id in "abcd":  # "a" is evicted by "d"
        ids.seen(event_id)
    assert len(ids) == 3
    assert ids.seen("d") is True
    assert ids.seen("b") is True  # still held; a repeat does not refresh it
    assert ids.seen("a") is False  # forgotten, so new again; this evicts "b", the oldest
    assert ids.seen("c") is True
    assert ids.seen("b") is False


def test_long_runs_of_evictions_keep_exactly_the_newest_ids() -> None:
    capacity = 1_000
    ids = RecentIds(capacity)
    for i in range(50_000):
        assert ids.seen(f"e{i}") is False
    assert len(ids) == capacity
    assert all(ids.seen(f"e{i}") for i in range(50_000 - capacity, 50_000))
    assert not ids.seen(f"e{50_000 - capacity - 1}")
