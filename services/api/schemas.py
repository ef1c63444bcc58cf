"""The API's request and response models (pydantic), shared by the routers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, field_validator

Window = Literal["1h", "24h", "7d"]
AlertState = Literal["firing", "acknowledged", "resolved"]
"""The state of an alert record: an alert event's status, or acknowledged by a person."""


class RateItem(BaseModel):
    policy_label: str
    vendor_id: str
    market: str | None = Field(None, description="set when the rates are split or filtered by market")
    window: Window
    window_start: datetime
    window_end: datetime
    verdicts: int
    errors: int
    error_rate: float | None
    ci_low: float
    ci_high: float
    by_error_type: dict[str, int]
    unable_to_judge: int
    decisions: int
    appeals: int
    overturned: int
    weighted_error_rate: float | None = Field(
        description="Hajek estimate: each verdict weighted by 1 / inclusion_probability (1 when absent)"
    )
    weighted_ci_low: float | None = Field(
        None, description="95% design-based interval of the weighted rate (Wilson on the effective verdicts)"
    )
    weighted_ci_high: float | None = None
    effective_verdicts: float | None = Field(
        None, description="p (1 - p) / linearised variance of the weighted rate, at most the verdicts"
    )


class RateList(BaseModel):
    items: list[RateItem]


class AttributionItem(BaseModel):
    dimension: str
    value: str
    share: float = Field(description="fraction of the scope's excess errors since the change in this slice (at most 1)")
    observed_rate: float | None
    baseline_rate: float | None
    verdicts: int


class Impact(BaseModel):
    decisions: int = Field(description="decisions made in the alert's scope since onset")
    estimated_wrong: int
    ci_low: int
    ci_high: int
    excess_wrong: int = Field(description="estimated wrong beyond what the baseline rate would have made")
    by_error_type: dict[str, int]
    since: datetime | None = Field(
        None, description="the change point these count from (the posterior-mean start of the rise)"
    )


class AlertItem(BaseModel):
    alert_id: str
    dedup_key: str
    rule: str
    policy_label: str
    vendor_id: str
    error_type: str
    status: AlertState
    started_at: datetime
    onset_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_by: str | None = None
    baseline_rate: float
    observed_rate: float
    ci_low: float
    ci_high: float
    verdicts: int
    errors: int
    summary: str
    historical: bool = Field(False, description="raised while catching up on old history: recorded, not paged")
    scope: Literal["pair", "policy_label", "vendor", "reviewer"] = Field(
        "pair",
        description='pair; policy_label (vendor_id "*": the label across vendors); vendor (policy_label "*");'
        " reviewer (a QA reviewer's agreement with the reference: reviewer_id)",
    )
    reviewer_id: str | None = Field(None, description="the pseudonymous reviewer of a reviewer-scope alert")
    parent_alert_id: str | None = Field(
        None, description="the firing wider-scope alert this one was raised under (linked, not paged on its own)"
    )
    baseline_source: str = Field("", description="operator, learned, sla, or learning:<prior>")
    attribution: list[AttributionItem] | None = Field(
        None, description="slices where the excess errors since onset sit, largest share first (Adtributor)"
    )
    impact: Impact | None = Field(None, description="decisions in scope since onset and how many are wrong")
    links: dict[str, str]


class AlertList(BaseModel):
    items: list[AlertItem]
    next_cursor: str | None = None


class RebaselineRequest(BaseModel):
    rule: Literal["error_rate", "over_enforcement", "under_enforcement"] | None = Field(
        None, description="one rule, or every rule of the pair when omitted"
    )
    rate: float | None = Field(None, gt=0, lt=1, description="the new baseline; learned again from now when omitted")


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str


def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("NUL characters are not allowed")
    return v


Text = Annotated[str, AfterValidator(_no_nul)]
HANDLE = Field(
    None, min_length=1, max_length=128, description="who acts (a handle, not an email); default: the key's name"
)
COMMENT = Field(None, max_length=2000)


class AckRequest(BaseModel):
    by: Text | None = HANDLE
    comment: Text | None = COMMENT


class ResolveRequest(BaseModel):
    by: Text | None = HANDLE
    comment: Text | None = COMMENT


class CommentRequest(BaseModel):
    by: Text | None = HANDLE
    comment: Text = Field(..., min_length=1, max_length=2000)


class SilenceRequest(BaseModel):
    until: AwareDatetime = Field(..., description="notifications for the pair are held back until this time")
    by: Text | None = HANDLE
    comment: Text | None = COMMENT

    @field_validator("until")
    @classmethod
    def _in_the_future(cls, v: datetime) -> datetime:
        if v <= datetime.now(tz=UTC):
            raise ValueError("until must be in the future")
        return v


class ErrorBody(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad request (e.g. an invalid cursor)"),
        (401, "no valid API key"),
        (403, "the key's role may not do this"),
        (404, "no such alert"),
        (503, "the database or Kafka is unavailable; retry later"),
    )
}


class HistoryItem(BaseModel):
    event_id: str
    alert_id: str | None
    policy_label: str
    vendor_id: str
    rule: str | None
    action: str
    actor: str
    key_id: str | None
    at: datetime
    until: datetime | None
    comment: str | None
    detail: str
    recorded_at: datetime


class HistoryList(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None = None


class SilenceItem(BaseModel):
    policy_label: str
    vendor_id: str
    until: datetime
    created_by: str
    created_at: datetime
    comment: str | None


EXPORT_COLUMNS = (
    "alert_id",
    "rule",
    "policy_label",
    "vendor_id",
    "error_type",
    "status",
    "started_at",
    "onset_at",
    "resolved_at",
    "acknowledged_at",
    "acknowledged_by",
    "resolved_by",
    "baseline_rate",
    "observed_rate",
    "ci_low",
    "ci_high",
    "verdicts",
    "errors",
    "summary",
    "historical",
    "scope",
    "parent_alert_id",
    "baseline_source",
    "reviewer_id",
)


class FindingItem(BaseModel):
    """A finding that a decision was wrong (``quality.remediations`` as stored)."""

    remediation_id: str
    decision_id: str
    entity_type: str
    entity_id: str
    policy_label: str
    vendor_id: str
    market: str
    action: str
    error_type: str
    recommendation: Literal["REVOKE_PENALTY", "REINSTATE", "ENFORCE", "RELABEL", "ADJUST_ACTION"]
    finding: Literal["qa", "appeal"]
    status: Literal["open", "retracted"]
    decided_at: datetime
    found_at: datetime
    evidence: dict[str, list[str]]


class FindingList(BaseModel):
    items: list[FindingItem]
    next_cursor: str | None = None


class RereviewItem(BaseModel):
    """A decision of the alert's scope since the change that QA has not judged."""

    decision_id: str
    entity_type: str
    entity_id: str
    policy_label: str
    vendor_id: str
    market: str
    content_language: str
    queue_id: str
    model_version: str
    actor_type: str
    policy_version: str
    action: str
    decided_at: datetime
    stratum: str = Field(description='the attribution slice it was drawn for ("market=DE"), or "elsewhere"')


class RereviewList(BaseModel):
    items: list[RereviewItem]
    next_cursor: str | None = None


QaWindow = Literal["24h", "7d", "30d", "90d"]


class Coefficient(BaseModel):
    value: float | None
    ci_low: float | None
    ci_high: float | None


class AgreementItem(BaseModel):
    policy_label: str | None = Field(description="null in the overall row")
    vendor_id: str | None = Field(description="null in the overall row")
    window: QaWindow
    window_start: datetime
    window_end: datetime
    items: int = Field(description="decisions with two or more ratings from different reviewers")
    ratings: int
    percent_agreement: float | None
    fleiss_kappa: float | None
    fleiss_kappa_ci_low: float | None
    fleiss_kappa_ci_high: float | None
    gwet_ac1: float | None
    gwet_ac1_ci_low: float | None
    gwet_ac1_ci_high: float | None
    krippendorff_alpha: float | None
    krippendorff_alpha_ci_low: float | None
    krippendorff_alpha_ci_high: float | None


class AgreementList(BaseModel):
    items: list[AgreementItem]
    categories: list[str] = Field(description="the scale the coefficients are over (UNABLE_TO_JUDGE left out)")
    interval: str = Field(description="how the 95% intervals are computed")


class ReviewerItem(BaseModel):
    reviewer_id: str = Field(description="pseudonymous, as the QA tool writes it")
    verdicts: int = Field(description="ratings of any tier in the window (UNABLE_TO_JUDGE left out)")
    error_calls: int = Field(description="of those, how many call an error")
    audited: int = Field(description="ratings on decisions an auditor (another reviewer) also rated")
    audit_agreement: float | None
    audit_agreement_ci_low: float | None
    audit_agreement_ci_high: float | None
    audit_kappa: float | None = Field(description="Cohen's kappa of the reviewer against the auditors")
    golden: int = Field(description="ratings on golden items")
    golden_accuracy: float | None
    golden_accuracy_ci_low: float | None
    golden_accuracy_ci_high: float | None
    reference_items: int = Field(description="audited and golden ratings: where the tendency is measured")
    error_call_rate: float | None = Field(description="the reviewer's error calls on the reference items")
    reference_error_rate: float | None = Field(description="the reference's error calls on the same items")
    tendency: float | None = Field(description="error_call_rate - reference_error_rate (paired): > 0 calls more")
    tendency_ci_low: float | None
    tendency_ci_high: float | None
    tendency_words: str


class ReviewerList(BaseModel):
    items: list[ReviewerItem]
    window: QaWindow
    window_start: datetime
    window_end: datetime


class SamplingCell(BaseModel):
    policy_label: str
    vendor_id: str
    market: str
    decisions: int = Field(description="decisions in the window (the volume planned for)")
    verdicts: int = Field(description="verdicts QA gave the cell in the window")
    error_rate: float = Field(description="the rate planned on: the cell's, shrunk toward its pair's")
    allocation: int = Field(description="verdicts to spend on the cell (Neyman)")
    expected_ci_width: float | None = Field(description="the 95% interval width the cell would reach")


class SamplingPlan(BaseModel):
    budget: int
    window: QaWindow
    allocated: int
    cells: list[SamplingCell]
