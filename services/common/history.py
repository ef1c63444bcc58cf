"""Applies alert actions to the database: one history row per action, plus the alert's new state.

Idempotent: the history row is keyed by ``action_id`` and state updates only move forward
(firing -> acknowledged -> resolved), so the API and a replay of the actions topic can both apply
the same action without changing the result.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.actions import AlertAction
from services.common.db import alert_history, alerts, insert_for, silences


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
