"""Prometheus for every service: one way to serve ``/metrics`` from a registry, and bounded label
values (configured lists, or the first K values seen; the rest is "other").

>>> b = LabelBudget.from_config("", cap=2)
>>> [b.value(v) for v in ("V01", "V02", "V03", "V01")]
['V01', 'V02', 'other', 'V01']
>>> LabelBudget.from_config("SCAMS, WEAPONS", cap=2).value("DRUGS")
'other'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

OTHER = "other"


@dataclass(slots=True)
class LabelBudget:
    allowed: frozenset[str] | None
    cap: int
    admitted: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, values: str, cap: int) -> LabelBudget:
        listed = frozenset(v.strip() for v in values.split(",") if v.strip())
        return cls(allowed=listed or None, cap=cap)

    def value(self, v: str) -> str:
        if self.allowed is not None:
            return v if v in self.allowed else OTHER
        if v in self.admitted:
            return v
        if len(self.admitted) < self.cap:
            self.admitted.add(v)
            return v
        return OTHER


def metrics_response(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The body and content type of a ``/metrics`` answer for ``registry`` (text exposition)."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
