"""Named figures ready to write, each a :class:`FigureSpec` with its export size and a line saying what it
shows: the paper figures of a vector, drawn from its :class:`~lens_steer.analysis.paper.VectorAnalysis`,
and the heatmaps of a sweep. Pure: runs no model, writes nothing (:mod:`lens_steer.viz.figure_io` does)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from lens_steer.analysis.paper import (
    AblationAnalysis,
    LensAnalysis,
    TraceAnalysis,
    VectorAnalysis,
    VectorStructure,
    ablation_name,
)
from lens_steer.eval.results import SummaryRow
from lens_steer.eval.sweep import sweep_grid
from lens_steer.viz.headline import HeadlineNumbers, headline_numbers
from lens_steer.viz.plotting import (
    plot_ablation,
    plot_explained_variance,
    plot_layer_cosine,
    plot_logit_lens,
    plot_pca_scatter,
    plot_source_cosine,
    plot_split_half,
    plot_sweep_heatmap,
    plot_token_set_lens,
    plot_trace,
)

__all__ = [
    "LENS_NORM_TEXT",
    "TRACE_PROMPT_TOKENS",
    "FigureSpec",
    "PaperFigures",
    "ablation_figures",
    "ablation_name",
    "lens_figures",
    "paper_figures",
    "structure_figures",
    "sweep_heatmaps",
    "trace_figures",
]

TRACE_PROMPT_TOKENS = 24
"""Trailing prompt tokens drawn in the projection trace (the instruction and the turn marker)."""
LENS_NORM_TEXT = "direction × final-norm gain γ, then W_U; no 1/RMS, no b_U"
"""How the lens scores a direction (see :func:`~lens_steer.analysis.lens_scores`)."""


@dataclass(frozen=True)
class FigureSpec:
    """One figure with the name and size it is saved under and a line saying what it shows.

    Attributes:
        name: File stem (``<name>.html`` / ``<name>.png``).
        title: Short human title.
        description: What the figure shows (one or two sentences, for the README).
        figure: The plotly figure.
        width: Static export width in pixels.
        height: Static export height in pixels.
        png: Whether a static PNG is written; False for figures only readable interactively
            (e.g. a large token table), which are written as HTML only.
    """

    name: str
    title: str
    description: str
    figure: go.Figure
    width: int = 900
    height: int = 600
    png: bool = True


@dataclass(frozen=True)
class PaperFigures:
    """All figures of a vector, the numbers behind them, and the analysis they were drawn from.

    Attributes:
        analysis: What was computed (its ``skipped`` lists the groups not built, its ``ablations``
            the per-question responses written beside the figures).
        figures: The figures, in README order.
        numbers: Headline numbers (``numbers.to_dict()`` is the JSON of ``summary.json``).
    """

    analysis: VectorAnalysis
    figures: tuple[FigureSpec, ...]
    numbers: HeadlineNumbers


def structure_figures(st: VectorStructure) -> list[FigureSpec]:
    """Figures that need only the vector: layer cosine, split-half stability, sources, PCA."""
    layer = st.layer
    figs = [FigureSpec(
        "layer_cosine", "Layer × layer cosine of the CoT direction",
        "Cosine similarity between the mean CoT directions of every pair of layers: a block "
        "structure means neighbouring layers share one direction.",
        plot_layer_cosine(st.layer_cosine), 760, 680)]
    figs.append(FigureSpec(
        "split_half", "Split-half stability per layer",
        f"cos(mean of half A, mean of half B) over {st.n_splits} random halves of the questions, per "
        "layer (left axis), with ‖v‖/‖resid‖ (left axis) and ‖v‖ (right axis).",
        plot_split_half(st.split_half, st.norms, st.resid_norm), 900, 520))
    figs.append(FigureSpec(
        "source_cosine", f"Cosine between per-source mean vectors (layer {layer})",
        f"Cosine between the mean per-question vectors of each corpus source at layer {layer}; "
        "hover shows the mean pairwise cosine within a source. Near 1 off the diagonal means "
        "one shared direction.",
        plot_source_cosine(st.sources), 700, 600))
    if st.pca.projections.shape[1] >= 2:
        figs.append(FigureSpec(
            "pca_scatter", f"PCA of per-question vectors (layer {layer})",
            f"Per-question vectors v(q) at layer {layer}, mean-centred, on their first two principal "
            "components, coloured by source; hover shows the question.",
            plot_pca_scatter(st.pca, list(st.source_labels), None if st.questions is None else list(st.questions)),
            900, 650))
    figs.append(FigureSpec(
        "pca_variance", f"PCA explained variance (layer {layer})",
        "Fraction of the variance of the centred per-question vectors captured by each principal "
        "component, with the cumulative sum.",
        plot_explained_variance(st.pca), 800, 500))
    return figs


def lens_figures(lens: LensAnalysis, layers: Sequence[int] | None = None) -> list[FigureSpec]:
    """The logit-lens figures: the main one (token groups vs random directions; when computed) and the
    top-k token tables of every layer's direction beside a random control (HTML only).

    Args:
        lens: The lens analysis. layers: Rows of the token tables (all layers by default).
    """
    figs = []
    result, seed = lens.token_set, lens.seed
    if result is not None:
        ts = result.token_set
        low, high = result.quantiles
        groups = "; ".join(f"{g}: {', '.join(repr(t) for t in ts.members(g))}" for g in ts.groups)
        figs.append(FigureSpec(
            "logit_lens", "Logit lens: step markers, numerals and answer markers vs random directions",
            f"Mean lens score ({LENS_NORM_TEXT}) and geometric mean rank of each token group under each layer's CoT "
            f"direction, against the {low:.0%}–{high:.0%} band and mean of {result.n_random} random directions of "
            f"the same norm per layer (seed {seed}). Groups: {groups}. Strings that are not one token of this "
            f"vocabulary are left out ({len(ts.dropped)}; listed in summary.json).",
            plot_token_set_lens(result), 1100, 920))
    rows = list(range(lens.lens.n_layers)) if layers is None else list(layers)
    height = max(400, 26 * len(rows) + 180)
    for which, verb in (("top", "promotes"), ("bottom", "suppresses")):
        figs.append(FigureSpec(
            f"logit_lens_{which}", f"Logit lens: tokens each layer's direction {verb} (table)",
            f"Layer × rank table of the {lens.k} tokens each layer's CoT direction {verb} most under the "
            f"unembedding ({LENS_NORM_TEXT}), beside a random direction of the same norm (seed {seed}) on a "
            "shared colour scale. Interactive (hover for ids and scores), so HTML only.",
            plot_logit_lens(lens.lens, rows, control=lens.control, which=which), 1900, height, png=False))
    return figs


def trace_figures(trace: TraceAnalysis) -> list[FigureSpec]:
    """The projection trace of one question answered from the CoT and from the direct prompt."""
    return [FigureSpec(
        "projection_trace", "Projection trace: CoT vs direct prompt",
        f"Projection of blocks.{trace.layer}.hook_resid_post onto the unit CoT direction at each token, for one "
        f"question answered from the CoT prompt and from the direct prompt (last {TRACE_PROMPT_TOKENS} "
        "prompt tokens at x < 0, response from x = 0).",
        plot_trace([trace.cot, trace.direct], prompt_tokens=TRACE_PROMPT_TOKENS), 1100, 520)]


def ablation_figures(ablation: AblationAnalysis) -> list[FigureSpec]:
    """Direction ablation on CoT prompts against a random control of the same norm (named by
    :func:`~lens_steer.analysis.paper.ablation_name`, re-exported here)."""
    result = ablation.result
    where = "every layer" if ablation.requested_layers is None else (
        f"layer {result.layers[0]}" if len(result.layers) == 1 else f"layers {', '.join(map(str, result.layers))}")
    return [FigureSpec(
        ablation.name, f"Direction ablation at {where} vs random control",
        f"CoT-prompted answers ({len(result.question_ids)} questions): mean length (± s.e.), CoT-style rate "
        "(scoring.is_cot_style) and rate of responses stuck in a loop (distinct token-trigram ratio < 0.2), "
        f"unmodified (baseline), with each layer's CoT direction projected out of hook_resid_post at {where} "
        "(ablated), and with a random direction of the same norm projected out there instead (random).",
        plot_ablation(result), 1200, 480)]


def paper_figures(analysis: VectorAnalysis) -> PaperFigures:
    """Every figure of the analysis, in README order (structure, logit lens, trace, ablations), with the
    headline numbers (:func:`~lens_steer.viz.headline.headline_numbers`).

    Args:
        analysis: From :func:`~lens_steer.analysis.paper.analyse_vector` (or built by hand).
    """
    figs: list[FigureSpec] = []
    if analysis.structure is not None:
        figs += structure_figures(analysis.structure)
    if analysis.lens is not None:
        figs += lens_figures(analysis.lens)
    if analysis.trace is not None:
        figs += trace_figures(analysis.trace)
    for ablation in analysis.ablations:
        figs += ablation_figures(ablation)
    return PaperFigures(analysis, tuple(figs), headline_numbers(analysis))


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
