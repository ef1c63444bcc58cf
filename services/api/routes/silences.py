"""``/v1/silences``: the silences still in force."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends

from services.api.deps import EngineDep, reader
from services.api.queries import silences_in_force
from services.api.schemas import SilenceItem

router = APIRouter(dependencies=[Depends(reader)])


@router.get("/v1/silences", response_model=list[SilenceItem])
async def list_silences(engine: EngineDep) -> list[SilenceItem]:
    """Silences still in force."""
    return [SilenceItem.model_validate(r) for r in await silences_in_force(engine, datetime.now(tz=UTC))]
