"""How far the input goes: the event time of each owned partition's newest record and its end
offset, read off the broker every few seconds (for the catch-up progress and the alerts' paging
horizon)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.config import ScorerSettings
from services.common.kafka import make_consumer
from services.contracts.batches import decode_batch

log = logging.getLogger("modq.scorer.stage")


class HeadWatch:
    """Per partition: ``heads`` (event time of the newest event on the broker, ms) and ``ends``
    (end offsets); ``owned`` says which partitions to read."""

    def __init__(self, settings: ScorerSettings, topic: str, owned: Callable[[], set[int]]) -> None:
        self.settings, self.topic, self.owned = settings, topic, owned
        self.heads: dict[int, int] = {}
        self.ends: dict[int, int] = {}
        self._reader: AIOKafkaConsumer | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Every ``scorer_progress_interval_s`` until ``stopping``: ``refresh``."""
        while not stopping.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.scorer_progress_interval_s)
        if self._reader is not None:
            await self._reader.stop()

    async def refresh(self) -> None:
        """Read the heads and ends now. Best effort: the main loop reports the broker's health."""
        try:
            if self._reader is None:
                reader = make_consumer(self.settings, max_partition_fetch_bytes=4_194_304)
                await reader.start()
                self._reader = reader
            await self._read(self._reader)
        except Exception as exc:
            log.debug("reading the newest records failed", extra={"error": repr(exc)})

    async def _read(self, reader: AIOKafkaConsumer) -> None:
        tps = [TopicPartition(self.topic, p) for p in sorted(self.owned())]
        if not tps:
            return
        reader.assign(tps)
        ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
        self.ends = {tp.partition: end for tp, end in ends.items()}
        wanted = [tp for tp in tps if ends[tp] > 0]
        for tp in wanted:
            reader.seek(tp, ends[tp] - 1)  # the last record batch
        if not wanted:
            return
        got = await reader.getmany(*wanted, timeout_ms=2_000)
        for tp in wanted:  # the fetch's high watermark: Tansu's ListOffsets falls short (``log_end``)
            highwater = reader.highwater(tp)
            if highwater is not None:
                self.ends[tp.partition] = max(self.ends[tp.partition], highwater)
        for tp, messages in got.items():
            newest = 0
            for m in messages:
                with contextlib.suppress(Exception):  # an undecodable batch is reported by the main consumer
                    newest = max([newest, *(ev.t_ms for ev in decode_batch(m.value or b""))])
            if newest:
                self.heads[tp.partition] = max(newest, self.heads.get(tp.partition, 0))
