"""What every detector shares: the protocol the monitors drive, the change estimate an alarm
carries, the log-likelihood-ratio steps of a Bernoulli stream, and how designs are rounded.

A detector watches one Bernoulli error stream (True: an error verdict). ``update`` feeds one
verdict; ``drift_detected`` is True only on the update that raised a new alarm (river's
convention); ``last_change`` says what the detector knows at that alarm; ``to_state`` and
``load_state`` carry it through a changelog.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

DEFAULT_SHIFT = 2.0
"""The shift a detector is tuned to detect fastest: a doubling of the baseline error rate."""


@dataclass(slots=True)
class ChangeEstimate:
    """What the detector knows at an alarm: verdicts and errors since the estimated onset."""

    verdicts: int
    errors: int
    statistic: float
    component: int = 0  # for a mixture: the shift whose term dominated the sum at the alarm


class Detector(Protocol):
    """A sequential detector of a rise of a Bernoulli error rate, re-armed after each alarm."""

    p0: float
    last_change: ChangeEstimate | None

    def update(self, is_error: bool) -> None: ...

    @property
    def drift_detected(self) -> bool: ...

    def to_state(self) -> list[float]: ...

    def load_state(self, state: list[float]) -> None: ...


def llr_steps(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood-ratio increments (on an error, on a correct verdict) for p1 against p0."""
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def round_design(baseline_rate: float, arl0: float) -> tuple[float, float]:
    """(p0, arl0) rounded so that designs (and their solved thresholds) can be cached."""
    return float(f"{min(max(baseline_rate, 1e-4), 0.45):.3g}"), float(f"{max(arl0, 10.0):.2g}")


def shifted(p0: float, shift: float) -> float:
    """The error rate ``shift`` times ``p0``, capped halfway between ``p0`` and 1."""
    return min(p0 * shift, (1 + p0) / 2)


def arl0_for_budget(verdicts_per_day: float, monitors: int, false_alerts_per_day: float, floor: float) -> float:
    """Per-monitor ARL0 that spends an equal share of the fleet's false-alert budget.

    A monitor that sees r verdicts a day and has in-control run length ARL0 raises r / ARL0 false
    alarms a day; giving each of ``monitors`` monitors budget / monitors yields ARL0 = r * n / b.
    """
    return max(floor, verdicts_per_day * monitors / false_alerts_per_day)
