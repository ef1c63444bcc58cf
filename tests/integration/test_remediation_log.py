"""The remediation log on the real broker: what a crashed worker had published is read back, so a
replayed record sends only the findings that did not reach the topic.

The window this closes (findings acknowledged by the broker, the state that records them not yet)
lasts one round and a kill -9 rarely lands in it, so the exactly-once tests alone would not show a
fault here: this test puts the topic in that state on purpose.
"""

from __future__ import annotations

import pytest

from services.common.config import ScorerSettings
from services.common.kafka import ensure_topics, make_producer
from services.contracts.remediations import Evidence, Remediation
from services.scorer.remediations import RemediationLog
from tests.support.pipeline_util import settings_from

pytestmark = pytest.mark.integration


def finding(n: int) -> Remediation:
    return Remediation(
        remediation_id=f"r-{n}",
        decision_id=f"d-{n}",
        entity_type="LISTING",
        entity_id=f"L-{n}",
        policy_label="SCAMS",
        vendor_id="V1",
        market="DE",
        action="REMOVE",
        error_type="OVER_ENFORCEMENT",
        recommendation="REINSTATE",
        evidence=Evidence(verdict_ids=[f"v-{n}"]),
        status="open",
        finding="qa",
        decided_at="2026-11-24T10:00:00Z",
        found_at="2026-11-24T10:01:00Z",
    )


async def test_a_restarted_worker_skips_the_findings_already_published(service_env: dict[str, str]) -> None:
    settings = settings_from(service_env, ScorerSettings)
    await ensure_topics(settings, {settings.topic_remediations: settings.partitions})
    producer = make_producer(settings)
    await producer.start()
    try:
        before = RemediationLog(settings)
        # Source partition 1 (of 2) publishes records 10 and 11; record 12's round never got out. A
        # source 3 would share target partition 1: its positions are its own.
        for offset, findings in ((10, [finding(1), finding(2)]), (11, [finding(3)])):
            items = before.select(1, offset, findings)
            for fut in await before.send(producer, 1, offset, items):
                await fut
        other = before.select(3, 50, [finding(9)])
        for fut in await before.send(producer, 3, 50, other):
            await fut
    finally:
        await producer.stop()

    after = RemediationLog(settings)  # a new process: nothing in memory
    await after.recover({0, 1, 3})
    assert after.published == {1: (11, 0), 3: (50, 0)}
    # The replay from the committed offset (say 10): 10 and 11 are on the topic, 12 is new.
    assert after.select(1, 10, [finding(1), finding(2)]) == []
    assert after.select(1, 11, [finding(3)]) == []
    assert [f.remediation_id for _, f in after.select(1, 12, [finding(4)])] == ["r-4"]
    assert [f.remediation_id for _, f in after.select(0, 5, [finding(5)])] == ["r-5"]  # nothing of 0 there


async def test_the_read_back_reaches_the_last_record_of_a_batch(service_env: dict[str, str]) -> None:
    """A round's findings go out as one record batch; the read-back must see its last record, not
    stop at the offset ListOffsets reports (Tansu's is the batch's first record plus one)."""
    settings = settings_from(service_env, ScorerSettings)
    await ensure_topics(settings, {settings.topic_remediations: settings.partitions})
    producer = make_producer(settings, linger_ms=200)
    await producer.start()
    try:
        before = RemediationLog(settings)
        futures = []
        for offset in range(100, 400):
            futures += await before.send(producer, 0, offset, before.select(0, offset, [finding(offset)]))
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    after = RemediationLog(settings)
    await after.recover({0})
    assert after.published == {0: (399, 0)}
    assert after.select(0, 399, [finding(399)]) == []
