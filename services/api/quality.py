"""Quality gauges on the API's ``/metrics``: error rates with intervals per pair and window, and
open alerts, read from the database at scrape time."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.queries import bucket_sums, window_start
from services.common.config import ApiSettings
from services.common.db import DB_UNAVAILABLE, alerts
from services.domain.rates import WINDOWS_MS, Counts, RateSummary

log = logging.getLogger("modq.api")


class QualityGauges:
    """Error rates with intervals per pair and window, and open alerts, read from the database at scrape time.

    Refreshed at most every ``REFRESH_S`` seconds; pairs beyond the label budget are pooled into
    "other" (their counts summed, then the rate and interval computed from the sums).
    """

    REFRESH_S = 10.0
    WINDOWS = ("1h", "24h")

    def __init__(self, registry: CollectorRegistry, settings: ApiSettings) -> None:
        pair = ["policy_label", "vendor_id", "window"]
        self.rate = Gauge("modq_error_rate_ratio", "Error rate over the window (event time)", pair, registry=registry)
        self.low = Gauge(
            "modq_error_rate_ci_low_ratio", "Lower bound of the Wilson 95% interval", pair, registry=registry
        )
        self.high = Gauge(
            "modq_error_rate_ci_high_ratio", "Upper bound of the Wilson 95% interval", pair, registry=registry
        )
        self.verdicts = Gauge("modq_window_verdicts", "Judged verdicts in the window", pair, registry=registry)
        self.open = Gauge(
            "modq_alerts_open", "Alerts not yet resolved, by rule and status", ["rule", "status"], registry=registry
        )
        self.labels, self.vendors = settings.metric_budgets()
        self.refreshed = -1e9

    async def refresh(self, engine: AsyncEngine) -> None:
        if time.monotonic() - self.refreshed < self.REFRESH_S:
            return
        self.refreshed = time.monotonic()
        now = datetime.now(tz=UTC)
        try:
            per_window = {
                name: await bucket_sums(engine, window_start(now, WINDOWS_MS[name]), now) for name in self.WINDOWS
            }
            async with engine.connect() as conn:
                open_alerts = (
                    await conn.execute(
                        select(alerts.c.rule, alerts.c.status, func.count())
                        .where(alerts.c.status != "resolved")
                        .group_by(alerts.c.rule, alerts.c.status)
                    )
                ).all()
        except DB_UNAVAILABLE:
            log.warning("metrics: database unavailable, serving the last values")
            return
        for gauge in (self.rate, self.low, self.high, self.verdicts, self.open):
            gauge.clear()
        for name, rows in per_window.items():
            pooled: dict[tuple[str, str], Counts] = {}
            for group, counts in rows:
                key = (self.labels.value(group["policy_label"]), self.vendors.value(group["vendor_id"]))
                pooled.setdefault(key, Counts()).add(counts)
            for (label, vendor), counts in pooled.items():
                summary = RateSummary.from_counts(counts)
                self.verdicts.labels(label, vendor, name).set(summary.verdicts)
                if summary.error_rate is not None:
                    self.rate.labels(label, vendor, name).set(summary.error_rate)
                    self.low.labels(label, vendor, name).set(summary.ci_low)
                    self.high.labels(label, vendor, name).set(summary.ci_high)
        for rule, status, n in open_alerts:
            self.open.labels(rule, status).set(n)
