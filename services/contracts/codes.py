"""The one table of modq's own codes: each enum as published (UPPER_CASE names), and the small
integer each is carried as inside modq (its position in the table).

Upstream schemas, the internal batches, the join, the monitors and the API all read these
tables; nothing else spells a verdict, error type, appeal outcome or actor type as a number.
"""

from __future__ import annotations

from typing import Final

VERDICT_CODES: Final = ("CORRECT", "INCORRECT", "UNABLE_TO_JUDGE")
CORRECT: Final = 0
INCORRECT: Final = 1
UNABLE_TO_JUDGE: Final = 2

ERROR_TYPES: Final = ("NONE", "OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL", "WRONG_ACTION")
NO_ERROR: Final = 0
OVER_ENFORCEMENT: Final = 1
UNDER_ENFORCEMENT: Final = 2
WRONG_LABEL: Final = 3
WRONG_ACTION: Final = 4

APPEAL_OUTCOMES: Final = ("UPHELD", "OVERTURNED", "PARTIALLY_OVERTURNED", "WITHDRAWN")
UPHELD: Final = 0
OVERTURNED: Final = 1
PARTIALLY_OVERTURNED: Final = 2
WITHDRAWN: Final = 3
OVERTURNING_OUTCOMES: Final = frozenset({OVERTURNED, PARTIALLY_OVERTURNED})

ACTOR_TYPES: Final = ("HUMAN", "MODEL", "HUMAN_ON_MODEL_SUGGESTION")

QA_TIERS: Final = ("QA", "CALIBRATION", "AUDIT", "GOLDEN")
"""A verdict's ``qa_tier``: QA (the primary verdict, also when absent), CALIBRATION (another blind
review of the same decision), AUDIT (a senior review, the reference for the QA reviewer), GOLDEN (the
decision is a golden item with a known answer; the verdict is the reviewer's answer)."""
QA: Final = 0
CALIBRATION: Final = 1
AUDIT: Final = 2
GOLDEN: Final = 3

VERDICT_INDEX: Final = {v: i for i, v in enumerate(VERDICT_CODES)}
ERROR_INDEX: Final = {v: i for i, v in enumerate(ERROR_TYPES)}
OUTCOME_INDEX: Final = {v: i for i, v in enumerate(APPEAL_OUTCOMES)}
ACTOR_INDEX: Final = {v: i for i, v in enumerate(ACTOR_TYPES)}
TIER_INDEX: Final = {v: i for i, v in enumerate(QA_TIERS)}
