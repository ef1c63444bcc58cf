"""The two decision-state stores behave the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.scorer.stores import MemoryStates, PartitionStates, RocksStates


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_stores_apply_puts_and_deletes_alike(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "p0"
    states: PartitionStates = MemoryStates() if kind == "memory" else RocksStates(path)
    states.write({b"a": b"1", b"b": b"2", b"c": b"3"})
    states.write({b"b": None, b"c": b"33", b"missing": None})
    assert states.get(b"a") == b"1" and states.get(b"b") is None and states.get(b"c") == b"33"
    assert sorted(states.items()) == [(b"a", b"1"), (b"c", b"33")]
    assert sorted(states.values()) == [b"1", b"33"]
    assert states.count() in (2, 3)  # RocksDB estimates
    states.close()
    assert not path.exists()
    if kind == "rocksdb":  # opened again: empty, whatever a previous process left
        again = RocksStates(path)
        assert again.get(b"a") is None
        again.close()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_a_snapshot_reads_the_values_as_they_were_when_taken(kind: str, tmp_path: Path) -> None:
    """A rebuild reads its view while processing writes on: later puts, changes and deletes must
    not show (rocksdict's own Snapshot objects do show them when iterated)."""
    states: PartitionStates = MemoryStates() if kind == "memory" else RocksStates(tmp_path / "p0")
    states.write({b"%05d" % i: b"v%d" % i for i in range(5_000)})
    view = states.snapshot()
    states.write({b"00001": b"changed", b"00002": None, b"new": b"added"})
    assert list(view) == [b"v%d" % i for i in range(5_000)]
    assert sorted(states.values()) != sorted(b"v%d" % i for i in range(5_000))  # the store did change
    states.close()


def test_stores_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import os

    from services.scorer.stores import remove_stores_of_dead_processes

    dead, mine, other = tmp_path / "99999999", tmp_path / str(os.getpid()), tmp_path / "notes"
    for path in (dead, mine, other):
        (path / "p0").mkdir(parents=True)
    remove_stores_of_dead_processes(tmp_path)
    assert not dead.exists() and mine.exists() and other.exists()
    remove_stores_of_dead_processes(tmp_path / "missing")  # no directory yet: nothing to do
