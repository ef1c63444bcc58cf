"""The measuring stick: agreement between QA reviewers (``/v1/agreement``), each reviewer against the
reference (``/v1/reviewers``), and where to spend tomorrow's QA budget (``/v1/sampling-plan``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, HTTPException, Query

from services.api.deps import EngineDep, reader
from services.api.queries import bucket_sums, review_items_in, reviewer_counts, utc
from services.api.schemas import (
    AgreementItem,
    AgreementList,
    QaWindow,
    ReviewerItem,
    ReviewerList,
    SamplingCell,
    SamplingPlan,
)
from services.domain.agreement import Agreement, agreement
from services.domain.reviewers import CATEGORIES, ReviewedItem, reviewer_figures
from services.domain.sampling import Cell, neyman

router = APIRouter(dependencies=[Depends(reader)])

QA_WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "90d": timedelta(days=90)}
PLAN_PRIOR = 50.0
"""Pseudo-verdicts at its pair's rate a cell's rate is shrunk with, for the plan (a cell of a few
verdicts with no error would otherwise get no budget at all)."""


def _bounds(window: QaWindow, as_of: datetime | None) -> tuple[datetime, datetime]:
    end = utc(as_of) or datetime.now(tz=UTC)
    if not 1970 <= end.year <= 9998:
        raise HTTPException(400, "as_of must be between the years 1970 and 9998")
    return end - QA_WINDOWS[window], end


AsOf = Query(None, description="end of the window (event time); default now")


def _agreement_item(
    found: Agreement, label: str | None, vendor: str | None, window: QaWindow, start: datetime, end: datetime
) -> AgreementItem:
    return AgreementItem(
        policy_label=label,
        vendor_id=vendor,
        window=window,
        window_start=start,
        window_end=end,
        items=found.items,
        ratings=found.ratings,
        percent_agreement=found.percent_agreement,
        fleiss_kappa=found.fleiss_kappa.value,
        fleiss_kappa_ci_low=found.fleiss_kappa.ci_low,
        fleiss_kappa_ci_high=found.fleiss_kappa.ci_high,
        gwet_ac1=found.gwet_ac1.value,
        gwet_ac1_ci_low=found.gwet_ac1.ci_low,
        gwet_ac1_ci_high=found.gwet_ac1.ci_high,
        krippendorff_alpha=found.krippendorff_alpha.value,
        krippendorff_alpha_ci_low=found.krippendorff_alpha.ci_low,
        krippendorff_alpha_ci_high=found.krippendorff_alpha.ci_high,
    )


@router.get("/v1/agreement", response_model=AgreementList)
async def get_agreement(
    engine: EngineDep,
    policy_label: str | None = None,
    vendor_id: str | None = None,
    window: QaWindow = Query("7d", description="decisions last rated within this window (event time)"),
    as_of: datetime | None = AsOf,
) -> AgreementList:
    """Agreement between reviewers on the decisions two or more of them rated, per (policy_label,
    vendor_id) and overall (the row whose policy_label and vendor_id are null): percent agreement,
    Fleiss' kappa, Gwet's AC1 and Krippendorff's alpha (nominal) over the error types."""
    start, end = _bounds(window, as_of)
    items = await review_items_in(engine, start, end, policy_label=policy_label, vendor_id=vendor_id)
    groups: dict[tuple[str, str], list[ReviewedItem]] = {}
    for item in items:
        groups.setdefault((item.policy_label, item.vendor_id), []).append(item)
    out = [
        _agreement_item(agreement([i.counts() for i in group], q=len(CATEGORIES)), label, vendor, window, start, end)
        for (label, vendor), group in sorted(groups.items())
    ]
    overall = agreement([i.counts() for i in items], q=len(CATEGORIES))
    out.append(_agreement_item(overall, None, None, window, start, end))
    return AgreementList(
        items=out,
        categories=list(CATEGORIES),
        interval="Gwet's linearised variance, t interval (n - 1 degrees of freedom), capped at 1",
    )


@router.get("/v1/reviewers", response_model=ReviewerList)
async def get_reviewers(
    engine: EngineDep,
    policy_label: str | None = None,
    vendor_id: str | None = None,
    window: QaWindow = Query("30d", description="ratings within this window (event time)"),
    as_of: datetime | None = AsOf,
) -> ReviewerList:
    """Each QA reviewer against the reference: agreement with auditors (percent, Cohen's kappa), golden
    accuracy, and the tendency to call more or fewer errors than the reference, with 95% intervals."""
    start, end = _bounds(window, as_of)
    items = await review_items_in(engine, start, end, policy_label=policy_label, vendor_id=vendor_id)
    counts = await reviewer_counts(engine, start, end, policy_label=policy_label, vendor_id=vendor_id)
    figures = reviewer_figures(items, counts)
    return ReviewerList(
        items=[ReviewerItem.model_validate(f.as_dict()) for f in figures],
        window=window,
        window_start=start,
        window_end=end,
    )


@router.get("/v1/sampling-plan", response_model=SamplingPlan)
async def get_sampling_plan(
    engine: EngineDep,
    budget: int = Query(..., ge=1, le=10_000_000, description="verdicts QA can give over the next window"),
    window: QaWindow = Query("24h", description="the window whose volumes and rates are planned on"),
    as_of: datetime | None = AsOf,
) -> SamplingPlan:
    """The QA budget per (policy_label, vendor_id, market) by Neyman allocation, n_h proportional to
    N_h sqrt(p_h (1 - p_h)), from the decisions and error rates of the last window, with the 95%
    interval width each cell would reach."""
    start, end = _bounds(window, as_of)
    cells = await bucket_sums(engine, start, end, by_market=True)
    pairs: dict[tuple[str, str], list[int]] = {}
    for group, c in cells:
        pair = pairs.setdefault((group["policy_label"], group["vendor_id"]), [0, 0])
        pair[0] += c.verdicts
        pair[1] += c.errors
    plan: list[Cell] = []
    for group, c in cells:
        n_pair, e_pair = pairs[(group["policy_label"], group["vendor_id"])]
        pair_rate = (e_pair + 1) / (n_pair + 2)
        rate = (c.errors + PLAN_PRIOR * pair_rate) / (c.verdicts + PLAN_PRIOR)
        plan.append(Cell((group["policy_label"], group["vendor_id"], group["market"]), c.decisions, rate))
    verdicts = {(g["policy_label"], g["vendor_id"], g["market"]): c.verdicts for g, c in cells}
    allocated = neyman(plan, budget)
    return SamplingPlan(
        budget=budget,
        window=window,
        allocated=sum(a.verdicts for a in allocated),
        cells=[
            SamplingCell(
                policy_label=a.key[0],
                vendor_id=a.key[1],
                market=a.key[2],
                decisions=a.decisions,
                verdicts=verdicts[a.key],
                error_rate=round(a.rate, 6),
                allocation=a.verdicts,
                expected_ci_width=a.ci_width,
            )
            for a in sorted(allocated, key=lambda a: (-a.verdicts, a.key))
        ],
    )
