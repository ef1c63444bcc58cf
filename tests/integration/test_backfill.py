"""A backfill: the scorer started on an events topic that already holds hours of history.

Six hours of events wait on the topic when the scorer starts. One pair drifted in hour two and
recovered; another drifts in the last half hour. With a paging horizon of 30 minutes behind the
newest event, the old drift is recorded (alert, `fired` and `resolved` rows) but nobody is paged;
the new one pages. While it catches up the scorer says how far it is, in /readyz and its log;
every count is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.processes import Service, eventually, free_port
from tests.support.scorerutil import alert_rows, exact, put_on_events_topic
from tests.support.streams import make_stream

pytestmark = pytest.mark.integration

OLD, NEW = ("LABEL_1", "V1"), ("LABEL_2", "V2")


async def test_a_backfill_records_old_alerts_pages_only_current_ones_and_reports_its_progress(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    from tests.support.receivers import Recorder

    hook_port = free_port()
    env = {
        **service_env,
        "MODQ_DATABASE_URL": database_url,
        "MODQ_ALERT_PAGING_HORIZON_S": "1800",
        "MODQ_SCORER_PROGRESS_INTERVAL_S": "0.5",
        "MODQ_CATCHUP_THRESHOLD_S": "600",
        "MODQ_WEBHOOK_URL": f"http://127.0.0.1:{hook_port}/hook",
        "MODQ_NOTIFIER_PORT": str(free_port()),
    }
    hook = await Recorder(hook_port).start()
    # 6 h of history; OLD at 25% errors in hour two, NEW at 25% in the last 30 minutes.
    stream = make_stream(150_000, span_h=6.0, drifts=((OLD, 1 / 6, 2 / 6, 0.25), (NEW, 11 / 12, 1.0, 0.25)))
    await put_on_events_topic(env, stream)
    scorer = spawn(["scorer"], env, "scorer")
    spawn(["notifier"], env, "notifier")
    seen: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['MODQ_SCORER_WEB_PORT']}", timeout=5) as web:

            async def sample_progress() -> None:
                while True:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        if progress := (await web.get("/readyz")).json().get("progress"):
                            seen.append(progress)
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample_progress())
            try:
                await eventually(lambda: exact(database_url, stream.truth), 180, interval=1.0)
            finally:
                sampler.cancel()

            async def caught_up() -> dict[str, Any] | None:
                progress: dict[str, Any] = (await web.get("/readyz")).json()["progress"]
                return progress if not progress["catching_up"] else None

            final = await eventually(caught_up, 30)
        catching = [p for p in seen if p["catching_up"]]
        assert len(catching) >= 3, seen
        assert all(p["behind_s"] > 600 and p["head_event_time_ms"] > p["event_time_ms"] for p in catching)
        assert any(p["events_per_s"] > 0 and p["eta_s"] is not None for p in catching), catching
        assert final["remaining_events"] == 0

        async def both_alerts() -> bool:
            alerts, _ = await alert_rows(database_url)
            return {(a[1], a[2]) for a in alerts if a[3] == "error_rate"} >= {OLD, NEW}

        await eventually(both_alerts, 60)
        alerts, history = await alert_rows(database_url)
        by_pair = {(a[1], a[2]): a for a in alerts if a[3] == "error_rate"}
        old_id, new_id = by_pair[OLD][0], by_pair[NEW][0]
        assert by_pair[OLD][4] == "resolved"  # recorded whole: it fired and resolved in the past
        assert sorted(h[1] for h in history if h[0] == old_id and h[1] != "evidence") == ["fired", "resolved"]
        assert sorted(h[1] for h in history if h[0] == new_id and h[1] != "evidence") == ["fired"]

        async def paged() -> set[str]:
            return {p["alert_id"] for p in hook.got("/hook") if p["state"] == "firing"}

        assert new_id in await eventually(paged, 60)
        await asyncio.sleep(3)  # anything else would have been delivered by now
        assert old_id not in {p["alert_id"] for p in hook.got("/hook")}  # history: never paged
        log = scorer.output()
        assert '"msg":"catching up"' in log and '"msg":"caught up"' in log
    finally:
        await hook.stop()
