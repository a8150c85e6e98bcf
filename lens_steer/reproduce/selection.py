"""The cells carried from the sweep to the evaluation (the sweep's best by :data:`~lens_steer.eval.sweep.BEST_RULE`,
plus the paper's own cells), the evaluation's conditions, and the headline rows; pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from lens_steer.eval.conditions import Condition, steered_condition
from lens_steer.eval.results import SummaryRow
from lens_steer.eval.sweep import BEST_RULE, best_steered
from lens_steer.reproduce.presets import Preset
from lens_steer.viz.report import text_table

__all__ = ["HeadlineRow", "SelectedCell", "Selection", "eval_conditions", "headline", "headline_table", "select_cells"]


@dataclass(frozen=True)
class SelectedCell:
    """A steered cell the evaluation runs.

    Attributes:
        label: ``"sweep-<mode>"`` (chosen by the rule on the dev split) or ``"paper-<mode>"`` (the paper's setting).
        mode / layer / coeff: The steering. scale: Its size relative to the residual norm (sweep cells; paper
            cells are absolute coefficients). dev_accuracy / dev_cot_style_rate: The sweep's numbers (sweep cells).
    """

    label: str
    mode: str
    layer: int
    coeff: float
    scale: float | None = None
    dev_accuracy: float | None = None
    dev_cot_style_rate: float | None = None

    def condition(self, vector) -> Condition:
        """The steered condition (a sweep cell by its scale, so its key equals the sweep's)."""
        if self.scale is not None and self.label.startswith("sweep-"):
            return steered_condition(vector, self.mode, self.layer, scale=self.scale)
        return steered_condition(vector, self.mode, self.layer, coeff=self.coeff)

    def text(self) -> str:
        """One line, e.g. ``sweep-single: layer 15, scale 0.3 (c = 2.95), dev accuracy 31.2 %``."""
        size = f"scale {self.scale:.3g} (c = {self.coeff:.4g})" if self.scale is not None else f"c = {self.coeff:g}"
        dev = (f", dev accuracy {100 * self.dev_accuracy:.1f} %, CoT-style {100 * self.dev_cot_style_rate:.1f} %"
               if self.dev_accuracy is not None and self.dev_cot_style_rate is not None else "")
        return f"{self.label}: layer {self.layer}, {size}{dev}"


@dataclass(frozen=True)
class Selection:
    """What ``selection.json`` holds: the rule, the cells, and the preset they came from."""

    rule: str
    cells: tuple[SelectedCell, ...]
    preset: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"rule": self.rule, "preset": self.preset, "cells": [asdict(c) for c in self.cells]}

    @classmethod
    def from_dict(cls, data: Mapping) -> Selection:
        """Read ``selection.json`` back.

        Raises:
            ValueError: a malformed file.
        """
        try:
            return cls(rule=str(data["rule"]), preset=data.get("preset"),
                       cells=tuple(SelectedCell(**c) for c in data["cells"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed selection: {exc}") from exc


def select_cells(sweep_summary: Sequence[SummaryRow], modes: Sequence[str], preset: Preset | None) -> Selection:
    """The sweep's best cell per mode (:func:`~lens_steer.eval.sweep.best_steered`, pooled over the dev
    benchmarks), then the preset's cells.

    Raises:
        ValueError: a mode has no steered cell in the summary.
    """
    cells = []
    for mode in modes:
        best = best_steered(sweep_summary, mode)
        if best is None:
            raise ValueError(f"the sweep has no steered-{mode} cell to choose from")
        cells.append(SelectedCell(f"sweep-{mode}", mode, int(best.layer), float(best.coeff), best.scale,
                                  best.accuracy, best.cot_style_rate))
    if preset is not None:
        cells += [SelectedCell(f"paper-{c.mode}", c.mode, c.layer, c.coeff) for c in preset.cells]
    return Selection(rule=BEST_RULE, cells=tuple(cells), preset=preset.model if preset is not None else None)


def eval_conditions(vector, selection: Selection, baselines: Sequence[str]) -> list[Condition]:
    """The baselines, then one steered condition per selected cell (a paper cell equal to the sweep's is run once).

    Raises:
        IndexError: a cell's layer is outside the vector.
    """
    out = [Condition.baseline(b) for b in baselines]
    for cell in selection.cells:
        cond = cell.condition(vector)
        if cond.key not in {c.key for c in out}:
            out.append(cond)
    return out


@dataclass(frozen=True)
class HeadlineRow:
    """A row of the final table: what the condition is (``direct``, ``sweep-single``, ...) and its pooled numbers."""

    label: str
    row: SummaryRow


def headline(eval_summary: Sequence[SummaryRow], selection: Selection, vector) -> tuple[HeadlineRow, ...]:
    """The pooled rows (``all``, or the only benchmark) of the evaluation, labelled by the selection."""
    names = {s.benchmark for s in eval_summary}
    top = "all" if "all" in names else (next(iter(names)) if len(names) == 1 else None)
    if top is None:
        return ()
    labels: dict[str, str] = {}
    for cell in selection.cells:
        key = cell.condition(vector).key
        labels[key] = f"{labels[key]} = {cell.label}" if key in labels else cell.label
    return tuple(HeadlineRow(labels.get(s.condition, s.condition), s) for s in eval_summary if s.benchmark == top)


def headline_table(rows: Sequence[HeadlineRow]) -> str:
    """The headline as a fixed-width table: accuracy with its 95% interval, CoT-style rate, mean tokens."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    out = [("condition", "layer", "coeff", "n", "accuracy % [95% CI]", "CoT-style %", "mean tokens")]
    for h in rows:
        s = h.row
        out.append((h.label, "" if s.layer is None else str(s.layer), "" if s.coeff is None else f"{s.coeff:.4g}",
                    str(s.n), f"{pct(s.accuracy)} [{pct(s.ci_low)}, {pct(s.ci_high)}]", pct(s.cot_style_rate),
                    f"{s.mean_tokens:.1f}"))
    return f"pooled over {rows[0].row.benchmark if rows else '-'}:\n" + text_table(out, 1)
