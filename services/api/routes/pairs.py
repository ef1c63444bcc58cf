"""``/v1/pairs/{policy_label}/{vendor_id}/...``: what operators do to a pair (silence, re-baseline).

A label with a ``/`` in it goes percent-encoded (``ip.trademark%2Fcounterfeit``)."""

from __future__ import annotations

import time
from datetime import UTC

from fastapi import APIRouter

from services.api.deps import EngineDep, Operator, PairDep, PublisherDep, SettingsDep
from services.api.queries import silence_of
from services.api.schemas import Accepted, RebaselineRequest, SilenceItem, SilenceRequest
from services.common.history import apply_action
from services.contracts.actions import new_action
from services.contracts.pairs import Rebaseline, encode_rebaseline, pair_key

router = APIRouter()


@router.post("/v1/pairs/{policy_label}/{vendor_id}/silence", response_model=SilenceItem)
async def silence(
    pair: PairDep, body: SilenceRequest, engine: EngineDep, publisher: PublisherDep, who: Operator
) -> SilenceItem:
    """Hold back notifications for a pair until a time (detection and history go on).

    A label with a ``/`` in it goes percent-encoded (``ip.trademark%2Fcounterfeit``)."""
    policy_label, vendor_id = pair
    until = body.until.astimezone(UTC)
    action = new_action(
        action="silenced",
        policy_label=policy_label,
        vendor_id=vendor_id,
        actor=body.by or who.name,
        key_id=who.key_id,
        until=until.isoformat().replace("+00:00", "Z"),
        comment=body.comment,
    )
    await publisher.action(action)
    await apply_action(engine, action)
    return SilenceItem.model_validate(await silence_of(engine, policy_label, vendor_id))


@router.post("/v1/pairs/{policy_label}/{vendor_id}/rebaseline", response_model=Accepted, status_code=202)
async def rebaseline(
    pair: PairDep,
    body: RebaselineRequest,
    engine: EngineDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    who: Operator,
) -> Accepted:
    """Re-baseline a pair's monitors: set the rate, or learn it again from now on.

    The request travels to the scorer on the pair's own partition, after the verdicts already queued.
    """
    policy_label, vendor_id = pair
    what = f"baseline {body.rate:.2%}" if body.rate is not None else "learning the baseline again"
    action = new_action(
        action="rebaselined",
        policy_label=policy_label,
        vendor_id=vendor_id,
        rule=body.rule,
        actor=who.name,
        key_id=who.key_id,
        detail=f"{body.rule or 'all rules'}: {what}",
    )
    await publisher.action(action)
    request = Rebaseline(rule=body.rule, rate=body.rate, t_ms=int(time.time() * 1000))
    await publisher.send(settings.topic_outcomes, encode_rebaseline(request), pair_key(policy_label, vendor_id))
    await apply_action(engine, action)
    return Accepted(detail=f"{policy_label} / {vendor_id} ({body.rule or 'all rules'}): {what}")
