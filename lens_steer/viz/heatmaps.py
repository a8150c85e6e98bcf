"""The sweep heatmaps: accuracy and CoT-style rate over (layer, coefficient) per benchmark and mode,
written as HTML (and PNG when a backend exists) through :mod:`lens_steer.viz.figure_io`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lens_steer.eval.results import SummaryRow
from lens_steer.eval.sweep import sweep_grid
from lens_steer.viz.figure_io import export_pngs_if_possible, write_html
from lens_steer.viz.figures import FigureSpec
from lens_steer.viz.plotting import plot_sweep_heatmap

__all__ = ["save_sweep_heatmaps", "sweep_heatmaps"]

_METRICS = (("accuracy", "accuracy"), ("cot_style_rate", "CoT-style rate"))


def sweep_heatmaps(summary: Sequence[SummaryRow], axes: Mapping[str, str]) -> list[FigureSpec]:
    """One heatmap per benchmark, mode and metric (accuracy, CoT-style rate), on one [0, 1] colour scale.

    Args:
        summary: Summary rows of a sweep.
        axes: ``{mode: "coeff" | "scale"}``, the grid axis of each mode.
    """
    specs = []
    for bench in sorted({s.benchmark for s in summary if s.mode is not None}):
        for mode, axis in axes.items():
            for metric, label in _METRICS:
                layers, cols, grid = sweep_grid(summary, mode, metric, benchmark=bench, axis=axis)
                if not layers:
                    continue
                title = f"{label}, steered-{mode}, {bench}"
                fig = plot_sweep_heatmap(layers, cols, grid, label, title=title)
                fig.update_xaxes(title="scale (x mean residual norm)" if axis == "scale" else "coefficient")
                fig.update_traces(zmin=0.0, zmax=1.0)  # rates: one colour scale for every heatmap
                name = f"{bench.replace(':', '_')}-{mode}-{metric}"
                specs.append(FigureSpec(name, title, title, fig, width=700, height=500))
    return specs


def save_sweep_heatmaps(summary: Sequence[SummaryRow], out: str | Path, axes: Mapping[str, str],
                        png: bool = True) -> tuple[list[Path], str]:
    """Write :func:`sweep_heatmaps` as HTML (plotly.js from the CDN), and PNG when ``png`` and possible.

    Returns:
        ``(paths written, message)``; the message is ``""`` unless PNG export was skipped or
        failed for some figures (the HTML is written either way).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = sweep_heatmaps(summary, axes)
    written = [write_html(spec.figure, out / f"{spec.name}.html", "cdn") for spec in specs]
    message = ""
    if png and specs:
        pngs, failed, problem = export_pngs_if_possible(specs, out)
        written += pngs
        if problem:
            message = f"PNG heatmaps skipped ({problem})"
        elif failed:
            message = f"PNG export failed for {', '.join(failed)}"
    return written, message
