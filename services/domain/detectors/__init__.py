"""Sequential drift detectors on Bernoulli error streams, one a file behind ``base.Detector``.

Pure and deterministic, no I/O.

modq's detector (``make_detector``) is a mixture Shiryaev-Roberts procedure (Pollak &
Tartakovsky, 2009; Tartakovsky, Nikiforov & Basseville, *Sequential Analysis*, ch. 8): for each
shift worth paging for (1.5x, 2x and 3x the baseline error rate) it keeps
``R_k = (1 + R_k) * L_k``, where ``L_k`` is the likelihood ratio of one verdict under that shift
against the baseline, and alarms when the weighted sum ``R = sum w_k R_k`` crosses ``A``. Half the
weight sits on a doubling. For a given false-alarm rate, Shiryaev-Roberts minimises the stationary
average delay to detection (of a change that comes long after the start, the detector re-armed
after each false alarm; the CUSUM minimises the worst case instead), and the mixture keeps it
fast on shifts smaller and larger than the one it is centred on.

Its false-alarm rate needs no tuning: under the baseline ``R_n - n`` is a martingale, so the mean
run length is exactly ``E[R_T]``, which is at least ``A``; the overshoot ``R_T / A`` at an alarm is
on average 1.22-1.32 for every baseline (``bench/drift_overshoot.py`` measures it), so
``A = arl0 / 1.2`` gives an in-control run length of at least ``arl0``.

A Bernoulli CUSUM (Reynolds & Stoumbos, 1999) with the threshold solved from the exact in-control
run length of its Markov chain (Brook & Evans, 1972) is kept beside it, for the benchmark and as a
library; the detector runs one per shift alongside its sums to estimate the change point.

>>> d = make_detector(baseline_rate=0.03, arl0=100_000)
>>> alarms = []
>>> for i in range(400):
...     d.update(i % 5 == 0)  # a 20% error rate, far above the 3% baseline
...     if d.drift_detected:
...         alarms.append(i)
>>> alarms[0] < 100
True
"""

from services.domain.detectors.base import (
    DEFAULT_SHIFT,
    ChangeEstimate,
    Detector,
    arl0_for_budget,
    llr_steps,
    round_design,
    shifted,
)
from services.domain.detectors.cusum import BernoulliCusum, cusum_arl, design, threshold_for_arl
from services.domain.detectors.mixture import MIXTURE, OVERSHOOT, MixtureShiryaevRoberts, make_detector, mixture_design
from services.domain.detectors.recovery import BernoulliRecovery

__all__ = [
    "DEFAULT_SHIFT",
    "MIXTURE",
    "OVERSHOOT",
    "BernoulliCusum",
    "BernoulliRecovery",
    "ChangeEstimate",
    "Detector",
    "MixtureShiryaevRoberts",
    "arl0_for_budget",
    "cusum_arl",
    "design",
    "llr_steps",
    "make_detector",
    "mixture_design",
    "round_design",
    "shifted",
    "threshold_for_arl",
]
