"""The events stage stops taking records while the rate book holds too many unwritten rows."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.common.config import ScorerSettings
from services.contracts.batches import decode_batch, encode_batch
from services.domain.book import RateBook
from services.domain.join import score_batch
from services.scorer.metrics import ScorerMetrics
from services.scorer.stage import DecisionStage
from tests.support import factories
from tests.support.factories import wire


def test_applying_waits_while_too_many_bucket_rows_are_unwritten() -> None:
    settings = ScorerSettings(scorer_max_pending_buckets=10)
    book = RateBook()
    registry = CollectorRegistry()
    stage = DecisionStage(settings, book, ScorerMetrics(registry))
    stage.progress = {0: (5, 0.0)}
    events = [wire("decision", factories.decision(f"d{i}", event_time=factories.ts(i * 60))) for i in range(12)]
    store: dict[bytes, bytes] = {}

    def apply(batch: list[object], through: int) -> None:
        writes, deltas = score_batch(decode_batch(encode_batch(batch)), store.get)  # type: ignore[arg-type]
        store.update(writes)
        book.apply(0, deltas, through)

    apply(events[:8], 1)  # 8 rows of 8 minutes, and their hour's automation slice
    assert not stage.waiting_for_database()
    apply(events[8:], 2)  # 12 rows of 12 minutes and the slice: over the limit
    assert stage.waiting_for_database() and stage.db_wait_since is not None
    write = book.take()
    assert write is not None
    assert stage.waiting_for_database()  # taken, not yet written: still unwritten rows
    book.written(write)
    assert not stage.waiting_for_database() and stage.db_wait_since is None
    assert stage.progress[0][0] == 5 and stage.progress[0][1] > 0.0  # the wait is not a stall
    waited = registry.get_sample_value("modq_scorer_database_wait_seconds_total")
    assert waited is not None and waited > 0
