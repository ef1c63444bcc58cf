"""Where the events stage keeps one partition's decision state: in memory, or in RocksDB.

Either way the changelog is the source of truth: a store is filled from it on assignment and
thrown away when the partition leaves, so a RocksDB store is a memory saving, not a second copy
to keep consistent (it is wiped when opened).

Keys are decision ids, values encoded ``DecisionState`` records (``join.encode_state``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast


class PartitionStates(Protocol):
    """The operations the stage needs; ``get`` is the hot one (once per event)."""

    def get(self, key: bytes) -> bytes | None: ...

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply puts and deletes (value None) as one batch."""

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...

    def values(self) -> Iterable[bytes]: ...

    def snapshot(self) -> Iterator[bytes]:
        """The values as they are now, read later: writes made meanwhile are not seen."""

    def count(self) -> int:
        """Number of decisions (estimated for RocksDB)."""

    def close(self) -> None: ...


class MemoryStates(dict[bytes, bytes]):
    """A dict: fastest, about 150-250 bytes of process memory per decision."""

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value

    def snapshot(self) -> Iterator[bytes]:
        return iter(list(self.values()))  # references to the (immutable) values: 8 bytes each

    def count(self) -> int:
        return len(self)

    def close(self) -> None:
        self.clear()


ROCKS_BLOCK_CACHE_BYTES = 64 * 2**20
"""One block cache (data blocks) for every partition's store."""
ROCKS_WRITE_BUFFER_BYTES = 16 * 2**20
"""Per store, at most two memtables of this size (RocksDB's default is 64 MiB each)."""
_block_cache: Any = None


def _rocks_options() -> Any:
    """Bounded memory: RocksDB's defaults let each store keep two 64 MiB memtables and a block
    cache of its own."""
    global _block_cache
    from rocksdict import BlockBasedOptions, Cache, Options

    if _block_cache is None:
        _block_cache = Cache(ROCKS_BLOCK_CACHE_BYTES)
    table = BlockBasedOptions()
    table.set_block_cache(_block_cache)
    # Index and filter blocks stay outside the cache, in the table readers (about 1.5 bytes per
    # key with ten bloom bits): in a cache this small, data blocks evicted them and every lookup
    # read them from disk again (a 10M-decision run fell to a tenth of its speed).
    table.set_bloom_filter(10, False)  # most lookups are of new decisions: absent keys
    options = Options(raw_mode=True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(ROCKS_WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    return options


class RocksStates:
    """RocksDB (``rocksdict``) in a directory of its own: state on local disk, with a bounded
    block cache and write buffer in memory."""

    def __init__(self, path: Path) -> None:
        from rocksdict import Rdict

        shutil.rmtree(path, ignore_errors=True)  # the changelog refills it
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path), _rocks_options())

    def get(self, key: bytes) -> bytes | None:
        return cast("bytes | None", self._db.get(key))  # raw mode: bytes in, bytes out

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return cast("Iterable[tuple[bytes, bytes]]", self._db.items())

    def values(self) -> Iterable[bytes]:
        return cast("Iterable[bytes]", self._db.values())

    def snapshot(self) -> Iterator[bytes]:
        # A RocksDB iterator reads the database as it was when the iterator was created (an
        # implicit snapshot). rocksdict's own Snapshot does not pass itself to its iterators.
        return iter(cast("Iterable[bytes]", self._db.values()))

    def count(self) -> int:
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def open_states(store: str, directory: Path, partition: int) -> PartitionStates:
    """A fresh, empty store for one partition: ``store`` is the ``MODQ_SCORER_STORE`` setting
    (``memory://`` or ``rocksdb://``), ``directory`` where RocksDB stores live."""
    if store.startswith("rocksdb"):
        return RocksStates(directory / f"p{partition}")
    return MemoryStates()


class PartitionStores(dict[int, PartitionStates]):
    """The open store of each partition a stage holds, by partition."""

    def __init__(self, store: str, directory: Path) -> None:
        super().__init__()
        self.store, self.directory = store, directory

    def open(self, partition: int) -> PartitionStates:
        """The partition's store, opened (empty) if there is none yet."""
        states = self.get(partition)
        if states is None:
            states = self[partition] = open_states(self.store, self.directory, partition)
        return states

    def drop(self, partition: int) -> None:
        """Close and forget the partition's store (a RocksDB one is deleted)."""
        states = self.pop(partition, None)
        if states is not None:
            states.close()


def remove_stores_of_dead_processes(root: Path) -> None:
    """Delete the state stores left by scorer processes that are gone (they are refilled anyway)."""
    for path in root.glob("*") if root.is_dir() else []:
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        try:
            os.kill(int(path.name), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's
