"""Reading a layer × size sweep: the grid of a metric per mode (a preset or any steering spec), and the rule that
picks the cell to carry forward; pure."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lens_steer.engines.steer_spec import SpecError, mode_text
from lens_steer.eval.results import SummaryRow

__all__ = ["BEST_RULE", "best_steered", "sweep_grid"]

BEST_RULE = "max accuracy on 'all' (pooled), then CoT-style rate, then smaller |coeff|, then lower layer"
"""The selection rule of :func:`best_steered`, as recorded in ``summary.json``."""


def _group(summary: Sequence[SummaryRow], benchmark: str) -> str:
    names = {s.benchmark for s in summary}
    if benchmark not in names and benchmark == "all" and len(names) == 1:
        return next(iter(names))
    return benchmark


def _mode(mode) -> str:
    """A mode as rows record it: a spec's canonical text (another label, e.g. a file-name slug, stays as it is)."""
    try:
        return mode_text(mode)
    except SpecError:
        return mode


def sweep_grid(
    summary: Sequence[SummaryRow], mode: str, metric: str, *, benchmark: str = "all", axis: str = "scale"
) -> tuple[list[int], list[float], list[list[float]]]:
    """A layer × (scale or coefficient) matrix of ``metric`` for one steering mode.

    Args:
        summary: Output of :func:`lens_steer.eval.results.summarise`.
        mode: ``"continuous"``, ``"single"`` or any steering spec (compared by its canonical text).
        metric: A :class:`SummaryRow` field, e.g. ``"accuracy"`` or ``"cot_style_rate"``.
        benchmark: Summary group (``"all"``, ``"gsm8k"``, ...); falls back to the only
            benchmark when there is just one.
        axis: ``"scale"`` or ``"coeff"``: which value labels the columns.

    Returns:
        ``(layers, column values, matrix)`` with NaN for cells not in the summary.
    """
    if axis not in ("scale", "coeff"):
        raise ValueError(f"axis must be 'scale' or 'coeff', got {axis!r}")
    benchmark = _group(summary, benchmark)
    mode = _mode(mode)
    cells = [s for s in summary if s.benchmark == benchmark and s.mode == mode]
    layers = sorted({s.layer for s in cells})
    cols = sorted({round(getattr(s, axis), 9) for s in cells if getattr(s, axis) is not None})
    grid = [[math.nan] * len(cols) for _ in layers]
    for s in cells:
        value = getattr(s, axis)
        if value is None:
            continue
        grid[layers.index(s.layer)][cols.index(round(value, 9))] = float(getattr(s, metric))
    return layers, cols, grid


def best_steered(summary: Sequence[SummaryRow], mode: str, *, benchmark: str = "all") -> SummaryRow | None:
    """The steered cell of ``mode`` to carry forward from a sweep (see :data:`BEST_RULE`).

    Rule: highest accuracy on ``benchmark``; ties broken by the higher CoT-style rate, then
    by the smaller ``|coeff|`` (the weaker intervention), then the lower layer.

    Returns:
        The summary row, or None when the mode was not swept.
    """
    benchmark = _group(summary, benchmark)
    mode = _mode(mode)
    cells = [s for s in summary if s.benchmark == benchmark and s.mode == mode]
    if not cells:
        return None
    return min(cells, key=lambda s: (-s.accuracy, -s.cot_style_rate, abs(s.coeff), s.layer))
