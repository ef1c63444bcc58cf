"""The alert history in the database: alert changes and people's actions, each applied once.

Alert changes (from quality.alerts) upsert the alert's row and add a ``fired`` or ``resolved``
row; actions add one row each, plus the alert's new state.

Idempotent: the history row is keyed by ``action_id`` and state updates only move forward
(firing -> acknowledged -> resolved), so the API and a replay of the actions topic can both apply
the same action without changing the result.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from sqlalchemy import and_, case, not_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import alert_history, alerts, insert_for, remediations, silences
from services.common.evidence import of_alert
from services.contracts.actions import AlertAction
from services.contracts.alerts import AlertEvent
from services.contracts.remediations import Remediation


def parse_ts(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def apply_action(engine: AsyncEngine, action: AlertAction) -> bool:
    """Record the action and apply it; False when it had been applied before."""
    at = parse_ts(action.at)
    row = insert_for(engine, alert_history).values(
        event_id=action.action_id,
        alert_id=action.alert_id,
        policy_label=action.policy_label,
        vendor_id=action.vendor_id,
        rule=action.rule,
        action=action.action,
        actor=action.actor,
        key_id=action.key_id,
        at=at,
        until=parse_ts(action.until),
        comment=action.comment,
        detail=action.detail,
        recorded_at=datetime.now(tz=UTC),
    )
    async with engine.begin() as conn:
        inserted = (await conn.execute(row.on_conflict_do_nothing(index_elements=["event_id"]))).rowcount
        if not inserted:
            return False
        if action.action == "acknowledged" and action.alert_id:
            await conn.execute(
                update(alerts)
                .where(alerts.c.alert_id == action.alert_id, alerts.c.status == "firing")
                .values(status="acknowledged", acknowledged_at=at, acknowledged_by=action.actor)
            )
        elif action.action == "resolved" and action.alert_id:
            await conn.execute(
                update(alerts)
                .where(alerts.c.alert_id == action.alert_id, alerts.c.status != "resolved")
                .values(status="resolved", resolved_at=at, resolved_by=action.actor)
            )
        elif action.action == "silenced":
            stmt = insert_for(engine, silences).values(
                policy_label=action.policy_label,
                vendor_id=action.vendor_id,
                until=parse_ts(action.until),
                created_by=action.actor,
                created_at=at,
                comment=action.comment,
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["policy_label", "vendor_id"],
                    set_={k: stmt.excluded[k] for k in ("until", "created_by", "created_at", "comment")},
                    where=stmt.excluded.created_at >= silences.c.created_at,  # a replay never undoes a newer one
                )
            )
    return True


async def record_alert_change(engine: AsyncEngine, event: AlertEvent) -> None:
    """Upsert the alert's row and add its ``fired`` or ``resolved`` history row (idempotent: a replay
    changes nothing, a replayed firing never reopens a resolved alert)."""
    row = {
        "alert_id": event.alert_id,
        "dedup_key": event.dedup_key,
        "rule": event.rule,
        "policy_label": event.policy_label,
        "vendor_id": event.vendor_id,
        "error_type": event.error_type,
        "status": event.status,
        "started_at": parse_ts(event.started_at),
        "onset_at": parse_ts(event.onset_at),
        "resolved_at": parse_ts(event.resolved_at),
        "baseline_rate": event.baseline_rate,
        "observed_rate": event.observed_rate,
        "ci_low": event.ci_low,
        "ci_high": event.ci_high,
        "verdicts": event.verdicts,
        "errors": event.errors,
        "statistic": event.statistic,
        "threshold": event.threshold,
        "summary": event.summary,
        "historical": event.historical,
        "scope": event.scope,
        "parent_alert_id": event.parent_alert_id,
        "baseline_source": event.baseline_source,
        "reviewer_id": event.reviewer_id,
        "updated_at": datetime.now(tz=UTC),
    }
    stmt = insert_for(engine, alerts).values(row)
    ex = stmt.excluded
    # A replayed "firing" never reopens a resolved alert; an acknowledgement survives updates.
    stale = and_(alerts.c.status == "resolved", ex.status != "resolved")
    stmt = stmt.on_conflict_do_update(
        index_elements=["alert_id"],
        set_={
            **{k: ex[k] for k in row if k not in ("alert_id", "status", "started_at", "onset_at")},
            "status": case(
                (ex.status == "resolved", "resolved"),
                (alerts.c.status == "acknowledged", "acknowledged"),
                else_=ex.status,
            ),
        },
        where=not_(stale),
    )
    fired = event.status != "resolved"
    entries = [("fired" if fired else "resolved", event.summary)]
    if fired and event.parent_alert_id:
        entries.append(("linked", f"raised under the wider alert {event.parent_alert_id}: not paged on its own"))
    async with engine.begin() as conn:
        if fired and not event.parent_alert_id:
            was = (
                await conn.execute(select(alerts.c.parent_alert_id).where(alerts.c.alert_id == event.alert_id))
            ).scalar_one_or_none()
            if was:  # its wider alert resolved while it fires: announced on its own now
                entries.append(("unlinked", f"its wider alert {was} resolved; announced on its own"))
        await conn.execute(stmt)
        for action, detail in entries:
            await conn.execute(_scorer_row(engine, event, f"{event.alert_id}:{action}", action, detail))


def _scorer_row(engine: AsyncEngine, event: AlertEvent, event_id: str, action: str, detail: str) -> Any:
    """A history row of the scorer's about an alert change (once per ``event_id``)."""
    fired = event.status != "resolved"
    return (
        insert_for(engine, alert_history)
        .values(
            event_id=event_id,
            alert_id=event.alert_id,
            policy_label=event.policy_label,
            vendor_id=event.vendor_id,
            rule=event.rule,
            action=action,
            actor="modq-scorer",
            at=parse_ts(event.started_at if fired else (event.resolved_at or event.started_at)),
            detail=detail,
            recorded_at=datetime.now(tz=UTC),
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


async def record_evidence(engine: AsyncEngine, event: AlertEvent) -> None:
    """Store the alert's attribution and impact as of this change (final once it resolves): what the
    list endpoints show without recomputing; and a history row (``evidence``) that says them in words,
    as they stood when it fired and when it resolved."""
    found = await of_alert(engine, event)
    when = "fired" if event.status != "resolved" else "resolved"
    note = _scorer_row(
        engine, event, f"{event.alert_id}:evidence:{when}", "evidence", found.words or "no excess to attribute"
    )
    async with engine.begin() as conn:
        await conn.execute(
            update(alerts)
            .where(alerts.c.alert_id == event.alert_id)
            .values(attribution=orjson.dumps(found.attribution).decode(), impact=orjson.dumps(found.impact).decode())
        )
        await conn.execute(note)


async def record_remediation(engine: AsyncEngine, r: Remediation) -> None:
    """Upsert one finding: a replay changes nothing, and ``retracted`` is never undone by an ``open``
    that arrives after it (a finding retracted stays retracted)."""
    row = {
        "remediation_id": r.remediation_id,
        "decision_id": r.decision_id,
        "entity_type": r.entity_type,
        "entity_id": r.entity_id,
        "policy_label": r.policy_label,
        "vendor_id": r.vendor_id,
        "market": r.market,
        "action": r.action,
        "error_type": r.error_type,
        "recommendation": r.recommendation,
        "finding": r.finding,
        "evidence": orjson.dumps(msgspec.to_builtins(r.evidence)).decode(),
        "status": r.status,
        "decided_at": parse_ts(r.decided_at),
        "found_at": parse_ts(r.found_at),
        "updated_at": datetime.now(tz=UTC),
    }
    stmt = insert_for(engine, remediations).values(row)
    stmt = stmt.on_conflict_do_update(
        index_elements=["remediation_id"],
        set_={"status": stmt.excluded.status, "updated_at": stmt.excluded.updated_at},
        where=and_(remediations.c.status == "open", stmt.excluded.status == "retracted"),
    )
    async with engine.begin() as conn:
        await conn.execute(stmt)
