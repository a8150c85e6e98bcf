"""Evaluation: conditions (direct, CoT prompt, steered), the resumable run (:class:`EvalRun` with
typed :class:`RunSettings`), item and summary rows, scoring, statistics and the sweep's best cell."""

from lens_steer.eval.conditions import BASELINE, Condition, steered_condition, sweep_conditions
from lens_steer.eval.evaluate import evaluate
from lens_steer.eval.record import RunRecord
from lens_steer.eval.results import ItemRow, SummaryRow, summarise
from lens_steer.eval.run import DataSettings, EvalRun, RunOutcome, RunSettings
from lens_steer.eval.scoring import is_cot_style, score
from lens_steer.eval.sweep import best_steered, sweep_grid

__all__ = [
    "BASELINE",
    "Condition",
    "DataSettings",
    "EvalRun",
    "ItemRow",
    "RunOutcome",
    "RunRecord",
    "RunSettings",
    "SummaryRow",
    "best_steered",
    "evaluate",
    "is_cot_style",
    "score",
    "steered_condition",
    "summarise",
    "sweep_conditions",
    "sweep_grid",
]
