"""``/v1/reports/transparency``: the EU DSA transparency figures of a period, as JSON or CSV."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.api.deps import EngineDep, SettingsDep, reader
from services.api.queries import utc
from services.common.reports import to_csv, transparency

router = APIRouter(dependencies=[Depends(reader)])


class Period(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime


class TransparencyReport(BaseModel):
    period: Period
    appeals: list[dict[str, Any]] = Field(description="complaints (Art. 15(1)(d)), one row per breakdown")
    automated_accuracy: list[dict[str, Any]] = Field(
        description="accuracy of automated moderation (Art. 15(1)(e); by language, Art. 42(2)(c))"
    )
    human_accuracy: list[dict[str, Any]] = Field(description="human moderation per vendor, for comparison")


@router.get(
    "/v1/reports/transparency",
    response_model=TransparencyReport,
    response_model_by_alias=True,
    responses={200: {"content": {"text/csv": {}}}},
)
async def get_transparency(
    engine: EngineDep,
    settings: SettingsDep,
    from_: datetime = Query(..., alias="from", description="start of the period (event time), inclusive"),
    to: datetime = Query(..., description="end of the period (event time), exclusive"),
    format: Literal["json", "csv"] = Query("json"),
    section: Literal["appeals", "automated_accuracy", "human_accuracy"] = Query(
        "appeals", description="the section a CSV holds (one file per section, as the templates have it)"
    ),
) -> Any:
    """The DSA transparency figures of [from, to): complaints and their outcomes, and the accuracy of
    automated and of human moderation, each rate with its 95% interval (see the README,
    "Transparency reporting"). Rows whose breakdown keys are all null are the totals."""
    start, end = utc(from_) or from_, utc(to) or to
    if not datetime(1970, 1, 1, tzinfo=UTC) <= start < end <= datetime(9999, 1, 1, tzinfo=UTC):
        raise HTTPException(400, "from must be before to, both between 1970 and 9999")
    report = await transparency(engine, start, end, settings.report_min_verdicts)
    if format == "csv":
        name = f"transparency-{section}-{start.date()}-{end.date()}.csv"
        return Response(
            to_csv(section, report[section]).encode(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return report
