"""``lens-steer reproduce``: the paper's whole pipeline (derive, sweep, select, eval, report, figures) as one
resumable :class:`Reproduction`, its typed settings and budgets, and the paper's presets."""

from lens_steer.reproduce.pipeline import ReproduceOutcome, Reproduction
from lens_steer.reproduce.presets import PRESETS, PaperCell, Preset, preset_for
from lens_steer.reproduce.record import StageResult
from lens_steer.reproduce.selection import HeadlineRow, SelectedCell, Selection
from lens_steer.reproduce.settings import (
    BUDGETS, STAGES, Budget, DeriveStage, EvalStage, FigureStage, LayerGrid, ReproduceSettings, SweepStage, budget,
    default_budget,
)

__all__ = [
    "BUDGETS",
    "PRESETS",
    "STAGES",
    "Budget",
    "DeriveStage",
    "EvalStage",
    "FigureStage",
    "HeadlineRow",
    "LayerGrid",
    "PaperCell",
    "Preset",
    "ReproduceOutcome",
    "ReproduceSettings",
    "Reproduction",
    "SelectedCell",
    "Selection",
    "StageResult",
    "SweepStage",
    "budget",
    "default_budget",
    "preset_for",
]
