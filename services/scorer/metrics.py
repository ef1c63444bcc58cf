"""The scorer's Prometheus metrics (one registry per process; pair labels bounded by budgets)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ScorerMetrics:
    """Every metric the scorer's stages and timers update, on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.batches = Counter("modq_scorer_batches", "Batch records processed", registry=registry)
        self.events = Counter("modq_scorer_events", "Events processed from batches", registry=registry)
        self.outcomes = Counter("modq_scorer_outcomes", "Judged verdicts fed to drift detectors", registry=registry)
        self.alert_changes = Counter(
            "modq_scorer_alert_changes", "Alert state changes raised", ["status"], registry=registry
        )
        self.flush_failures = Counter(
            "modq_scorer_db_write_failures", "Database writes that failed and will be retried", registry=registry
        )
        self.expired_decisions = Counter(
            "modq_scorer_expired_decisions",
            "Decision states expired on event time (MODQ_SCORER_STATE_RETENTION_S)",
            registry=registry,
        )
        self.database_wait = Counter(
            "modq_scorer_database_wait_seconds",
            "Time the scorer stopped taking records until rate-bucket writes caught up"
            " (MODQ_SCORER_MAX_PENDING_BUCKETS)",
            registry=registry,
        )
        self.dirty_buckets = Gauge(
            "modq_scorer_dirty_buckets", "Rate buckets awaiting a database write", registry=registry
        )
        self.last_processed = Gauge(
            "modq_scorer_last_processed_timestamp_seconds", "Wall time of the last processed batch", registry=registry
        )
        self.verdicts = Counter(
            "modq_scorer_verdicts",
            "Judged verdicts seen by the detectors, by error type (NONE: correct); bounded labels",
            ["policy_label", "vendor_id", "error_type"],
            registry=registry,
        )
        self.statistic = Gauge(
            "modq_scorer_detector_statistic",
            "Drift statistic of a pair's monitor: log of its Shiryaev-Roberts sum, alarms above log A; bounded labels",
            ["policy_label", "vendor_id", "rule"],
            registry=registry,
        )
        self.monitor_firing = Gauge(
            "modq_scorer_monitor_firing",
            "1 while a pair's monitor has an alert firing; bounded labels",
            ["policy_label", "vendor_id", "rule"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "modq_scorer_consumer_lag_records",
            "Records on the events topic not yet processed, per partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.event_time = Gauge(
            "modq_scorer_event_time_seconds",
            "Event time reached: of the slowest partition with records still to read (else the newest applied)",
            registry=registry,
        )
        self.head_event_time = Gauge(
            "modq_scorer_head_event_time_seconds",
            "Event time of the newest record on this worker's partitions of the events topic",
            registry=registry,
        )
        self.remaining_events = Gauge(
            "modq_scorer_catchup_remaining_events",
            "Events on this worker's partitions not yet processed (estimated from records)",
            registry=registry,
        )
        self.catchup_eta = Gauge(
            "modq_scorer_catchup_eta_seconds",
            "Estimated time until the remaining events are processed, at the rate of the last 30 s",
            registry=registry,
        )
        self.lag = Histogram(
            "modq_scorer_processing_lag_seconds",
            "Event time to processing time of the newest event in each batch",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
