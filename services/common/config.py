"""Configuration from environment variables: one pydantic-settings class per service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from services.common.metrics import LabelBudget
    from services.domain.monitor import MonitorPolicy

DEV_DATABASE_URL = "sqlite+aiosqlite:///./.modq-dev/modq.db"


class FileSecrets(PydanticBaseSettingsSource):
    """MODQ_<NAME>_FILE=/path: the setting's value is the file's content (for mounted Kubernetes secrets)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # unused: __call__ does it
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            path = os.environ.get(f"MODQ_{name.upper()}_FILE")
            if path:
                out[name] = Path(path).read_text().strip()
        return out


class CommonSettings(BaseSettings):
    """Settings every service shares (prefix MODQ_). Secrets may come from files: MODQ_<NAME>_FILE."""

    model_config = SettingsConfigDict(env_prefix="MODQ_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then environment variables, then MODQ_<NAME>_FILE files."""
        return init_settings, env_settings, FileSecrets(settings_cls)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    database_url: str = DEV_DATABASE_URL
    auto_migrate: bool = True
    topic_decisions: str = "moderation.decisions"
    topic_verdicts: str = "qa.verdicts"
    topic_appeals: str = "appeal.outcomes"
    topic_alerts: str = "quality.alerts"
    topic_deadletter: str = "modq.deadletter"
    topic_events: str = "modq.events"
    topic_outcomes: str = "modq.pair-outcomes"
    topic_alert_actions: str = "modq.alert-actions"
    topic_remediations: str = "quality.remediations"
    partitions: int = Field(8, ge=1, description="partitions of modq.events and the scorer's tables")
    baseline_error_rate: float = Field(
        0.03,
        gt=0,
        lt=1,
        description="SLA rate, and the prior while learning (the console's baseline for a pair without alerts)",
    )
    public_api_url: str = "http://127.0.0.1:8000"
    metric_policy_labels: str = Field("", description="comma list of policy labels with their own metric labels")
    metric_vendors: str = Field("", description="comma list of vendors with their own metric labels")
    metric_label_cap: int = Field(50, ge=1, description="unlisted: the first N values seen; the rest is 'other'")
    consumer_retry_s: float = Field(
        30.0, gt=0, description="a partition waiting at a record batch that cannot be read is tried again this often"
    )
    log_level: str = "INFO"
    framework_log_level: str = Field("WARNING", description="log level of Faust, mode and aiokafka")

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if not (v.startswith("postgresql+asyncpg://") or v.startswith("sqlite+aiosqlite://")):
            raise ValueError("MODQ_DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return v

    def metric_budgets(self) -> tuple[LabelBudget, LabelBudget]:
        """(policy_label, vendor_id) label budgets for Prometheus metrics."""
        from services.common.metrics import LabelBudget

        return (
            LabelBudget.from_config(self.metric_policy_labels, self.metric_label_cap),
            LabelBudget.from_config(self.metric_vendors, self.metric_label_cap),
        )

    @property
    def input_topics(self) -> dict[str, str]:
        return {self.topic_decisions: "decision", self.topic_verdicts: "verdict", self.topic_appeals: "appeal"}


class IngestSettings(CommonSettings):
    """modq ingest: Kafka consumer plus HTTP batch endpoint."""

    ingest_group_id: str = "modq-ingest"
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8081
    max_record_bytes: int = 65_536
    max_future_skew_s: int = 300
    late_grace_s: int = Field(21_600, ge=0, description="events this far behind their stream's newest are late")
    ingest_batch_max_events: int = Field(10_000, ge=1, description="records per poll of the upstream topics")
    ingest_dedup_cache_size: int = 500_000
    ingest_http_max_events: int = 10_000
    ingest_http_max_body_bytes: int = Field(8_388_608, ge=1024, description="larger request bodies get 413")
    ingest_require_key: bool = Field(True, description="HTTP publishers need an API key with the publisher role")
    ingest_rate_limit_rps: float = Field(20.0, gt=0, description="HTTP requests per second per API key")
    ingest_rate_limit_burst: int = Field(40, ge=1, description="burst of HTTP requests per API key")


class ScorerSettings(CommonSettings):
    """modq scorer: the Faust app."""

    scorer_app_id: str = "modq-scorer"
    scorer_web_host: str = "127.0.0.1"
    scorer_web_port: int = 6066
    scorer_store: str = "memory://"
    scorer_data_dir: str = Field("", description="Faust data directory (table stores); default: ./<app id>-data")
    baseline_mode: Literal["learned", "sla"] = "learned"
    baseline_over_enforcement_rate: float = Field(0.015, gt=0, lt=1)
    baseline_under_enforcement_rate: float = Field(0.01, gt=0, lt=1)
    baseline_verdicts: int = Field(10_000, ge=100, description="verdicts a learned baseline is frozen after")
    baseline_min_verdicts: int = Field(
        0, ge=0, description="verdicts before a learning pair is monitored (0: from its first, held to its prior)"
    )
    baseline_prior_strength: float = Field(200, ge=0, description="pseudo-verdicts of the prior while learning")
    arl0: float | None = Field(None, gt=10, description="fixed ARL0 per monitor; unset: from the fleet budget")
    false_alerts_per_day: float = Field(1.0, gt=0, description="fleet-wide false-alert budget")
    monitored_pairs: int = Field(320, ge=1, description="(policy_label, vendor_id) pairs in the fleet")
    rereview_sample_rate: float = Field(
        0.02, ge=0, le=1, description="share of decisions kept (by a hash of their id) for re-review queues"
    )
    monitored_labels: int = Field(40, ge=0, description="policy labels in the fleet (each a label-wide monitor)")
    monitored_vendors: int = Field(8, ge=0, description="vendors in the fleet (each a vendor-wide monitor)")
    monitored_reviewers: int = Field(50, ge=0, description="QA reviewers in the fleet (each an agreement monitor)")
    baseline_reviewer_disagreement_rate: float = Field(
        0.05, gt=0, lt=1, description="SLA share of a reviewer's ratings that disagree with the reference"
    )
    audit_replaces_qa: bool = Field(
        False, description="an AUDIT verdict replaces the decision's QA verdict in the error rates"
    )
    min_arl0: float = Field(5_000, gt=10)
    resolve_threshold: float = Field(6.0, gt=0, description="downward-CUSUM threshold that resolves an alert")
    pair_page_hold_s: float = Field(
        10_800, ge=0, description="how long a pair's alarm waits while its label or vendor is near its threshold"
    )

    def monitor_policy(self) -> MonitorPolicy:
        from services.contracts.alerts import RULE_ERROR_RATE, RULE_OVER, RULE_REVIEWER, RULE_UNDER, RULES
        from services.domain.monitor import MonitorPolicy

        return MonitorPolicy(
            baseline_mode=self.baseline_mode,
            sla_rates=(
                (RULE_ERROR_RATE, self.baseline_error_rate),
                (RULE_OVER, self.baseline_over_enforcement_rate),
                (RULE_UNDER, self.baseline_under_enforcement_rate),
                (RULE_REVIEWER, self.baseline_reviewer_disagreement_rate),
            ),
            baseline_verdicts=self.baseline_verdicts,
            min_verdicts_to_detect=self.baseline_min_verdicts,
            prior_strength=self.baseline_prior_strength,
            arl0=self.arl0,
            false_alerts_per_day=self.false_alerts_per_day,
            # Every scope's monitors share the budget: pairs, labels across vendors, vendors across labels.
            monitors_in_fleet=(self.monitored_pairs + self.monitored_labels + self.monitored_vendors) * len(RULES)
            + self.monitored_reviewers,
            min_arl0=self.min_arl0,
            resolve_threshold=self.resolve_threshold,
            hold_ms=int(self.pair_page_hold_s * 1000),
        )

    flush_interval_s: float = Field(0.5, gt=0, description="changed rate buckets are written this often")
    scorer_partition_fetch_bytes: int = Field(
        262_144, ge=65_536, description="per-partition fetch size of the events consumer (keeps partitions in step)"
    )
    scorer_stall_timeout_s: float = Field(120.0, gt=0, description="no progress with input waiting: unhealthy")
    scorer_max_pending_buckets: int = Field(
        200_000,
        gt=0,
        description=(
            "rate-bucket rows waiting for the database (about 300 bytes each) above which the"
            " scorer stops taking new records until writes catch up: memory stays bounded when the"
            " database is slow or down, and the lag shows it"
        ),
    )
    scorer_exit_on_stall: bool = Field(True, description="exit (for the supervisor to restart) on a stall")
    faust_session_timeout_s: float = 30.0
    faust_rebalance_timeout_s: float = 30.0
    scorer_state_retention_s: float = Field(
        604_800.0,
        gt=0,
        description=(
            "decision state expires this long (event time) after the newest event of its decision,"
            " measured against the newest event of its partition; rate buckets older than that are"
            " closed (their database rows stay)"
        ),
    )
    alert_paging_horizon_s: float = Field(
        3600.0,
        ge=0,
        description=(
            "alert changes further behind the newest event on the input than this (event time) are"
            " history: recorded, not paged (a backfill raises no pages for old drifts)"
        ),
    )
    scorer_progress_interval_s: float = Field(
        5.0, gt=0, description="how often the scorer reads its partitions' newest records and reports its progress"
    )
    catchup_threshold_s: float = Field(
        300.0, gt=0, description="behind the newest event by more than this (event time): catching up, reported"
    )
    scorer_instance_id: str = Field(
        "",
        description=(
            "static group membership (Kafka group.instance.id) for this worker's consumer groups: a"
            " restarted worker with the same id gets its partitions back without waiting out the"
            " session timeout. Unique per worker (the pod name); empty: dynamic membership"
        ),
    )


class ApiSettings(CommonSettings):
    """modq api: FastAPI over the database."""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_read_requires_key: bool = Field(False, description="reads need a viewer key too (writes always need a key)")
    api_rates_cache_s: float = Field(0.5, ge=0, description="identical /v1/rates requests for now share an answer")
    ui_session_secret: str | None = Field(
        None, description="HMAC key of the console's session cookies and CSRF tokens; unset: one per process"
    )
    report_min_verdicts: int = Field(
        30, ge=0, description="report cells with fewer verdicts (complaints decided) than this are flagged low_sample"
    )


class NotifierSettings(CommonSettings):
    """modq notifier: delivers alert state changes to Alertmanager, PagerDuty, Slack and a webhook."""

    notifier_group_id: str = Field("modq-notifier", description="prefix of the per-receiver consumer groups")
    notifier_host: str = "127.0.0.1"
    notifier_port: int = 8082
    alertmanager_url: str | None = Field(None, description="e.g. http://alertmanager:9093; unset: off")
    alertmanager_resend_s: float = Field(60.0, gt=0, description="firing alerts are re-sent this often")
    pagerduty_routing_key: str | None = Field(None, description="Events API v2 integration key; unset: off")
    pagerduty_routing_key_policy_label: str | None = Field(
        None, description="routing key for label-wide alerts (the policy team); unset: the default key"
    )
    pagerduty_routing_key_vendor: str | None = Field(
        None, description="routing key for vendor-wide alerts (the vendor's manager); unset: the default key"
    )
    pagerduty_routing_key_reviewer: str | None = Field(
        None, description="routing key for reviewer alerts (the QA lead); unset: the default key"
    )
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    slack_webhook_url: str | None = Field(None, description="Slack incoming-webhook URL; unset: off")
    notifier_evidence_wait_s: float = Field(
        10.0, ge=0, description="how long a notice waits for the counts to reach its alarm (attribution, impact)"
    )
    slack_webhook_url_policy_label: str | None = Field(
        None, description="Slack webhook for label-wide alerts; unset: the default webhook"
    )
    slack_webhook_url_vendor: str | None = Field(
        None, description="Slack webhook for vendor-wide alerts; unset: the default webhook"
    )
    slack_webhook_url_reviewer: str | None = Field(
        None, description="Slack webhook for reviewer alerts (the QA lead's channel); unset: the default webhook"
    )
    webhook_url: str | None = Field(None, description="generic signed webhook; unset: off")
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key for the webhook's signature header")
    notify_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per delivery attempt")
    notify_retry_initial_s: float = Field(0.5, gt=0)
    notify_retry_max_s: float = Field(30.0, gt=0, description="cap of the exponential backoff between attempts")
