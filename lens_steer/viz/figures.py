"""Every analysis of a CoT vector as a list of named figures plus headline numbers; writes nothing.

``lens-steer figures`` and ``notebooks/03_paper_figures.ipynb`` both call
:func:`paper_figures`; files are written by :mod:`lens_steer.viz.figure_io`; the numbers are
:mod:`lens_steer.viz.headline` dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from lens_steer.analysis import (
    DEFAULT_TOKEN_GROUPS,
    AblationResult,
    TraceResult,
    alignment_with_direction,
    cosine_by_source,
    direction_ablation,
    layer_cosine_matrix,
    pairwise_cosine_stats,
    pca_per_question,
    projection_trace,
    split_half_stability,
)
from lens_steer.viz.figure_spec import FigureSpec
from lens_steer.viz.headline import (
    AblationNumbers,
    HeadlineNumbers,
    LayerCosineNumbers,
    NormNumbers,
    PairwiseNumbers,
    PCANumbers,
    SourceNumbers,
    SplitHalfNumbers,
    StructureNumbers,
    TraceNumbers,
    TraceStyleNumbers,
)
from lens_steer.viz.headline import rounded as _r
from lens_steer.viz.headline import rounded_list as _rl
from lens_steer.viz.lens_figures import LENS_RANDOM_DIRECTIONS, logit_lens_figures, token_set_figures
from lens_steer.viz.plotting import (
    plot_ablation,
    plot_explained_variance,
    plot_layer_cosine,
    plot_pca_scatter,
    plot_source_cosine,
    plot_split_half,
    plot_trace,
)

__all__ = [
    "FigureSpec",
    "PaperFigures",
    "ablation_figures",
    "ablation_name",
    "logit_lens_figures",
    "paper_figures",
    "structure_figures",
    "token_set_figures",
    "trace_figures",
]

TRACE_PROMPT_TOKENS = 24
"""Trailing prompt tokens drawn in the projection trace (the instruction and the turn marker)."""


@dataclass
class PaperFigures:
    """All figures of a vector, the numbers behind them, and the model-run results.

    Attributes:
        figures: The figures, in README order.
        numbers: Headline numbers (``numbers.to_dict()`` is the JSON of ``summary.json``).
        skipped: ``{figure group: reason}`` for groups that could not be built.
        traces: Projection traces (CoT first), if built.
        ablations: Ablation results by figure name (see :func:`ablation_name`), if built.
    """

    figures: list[FigureSpec] = field(default_factory=list)
    numbers: HeadlineNumbers = field(default_factory=HeadlineNumbers)
    skipped: dict[str, str] = field(default_factory=dict)
    traces: list[TraceResult] = field(default_factory=list)
    ablations: dict[str, AblationResult] = field(default_factory=dict)


def structure_figures(vector, layer: int, *, n_splits: int = 100,
                      seed: int = 0) -> tuple[list[FigureSpec], StructureNumbers]:
    """Figures that need only the vector: layer cosine, split-half stability, sources, PCA.

    Args:
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`; every figure but the layer
            cosine needs ``per_question`` with at least two questions.
        layer: Layer for the source and PCA figures.
        n_splits: Random half splits for the stability estimate.
        seed: Seed of the splits.

    Returns:
        ``(figures, numbers)``.

    Raises:
        ValueError: If ``per_question`` is missing or has fewer than two questions (the
            layer-cosine figure alone is then not worth a call: use the analysis directly).
    """
    pq = vector.per_question
    if pq is None or pq.shape[0] < 2:
        raise ValueError("the vector has no per-question vectors (or fewer than two): "
                         "split-half, source and PCA figures need them")
    figs: list[FigureSpec] = []
    cos = layer_cosine_matrix(vector.directions)
    adjacent = torch.diagonal(cos, offset=1)
    layer_cos = LayerCosineNumbers(layer, _r(adjacent.mean()), _r(adjacent.min()), _rl(cos[layer], 3))
    figs.append(FigureSpec(
        "layer_cosine", "Layer × layer cosine of the CoT direction",
        "Cosine similarity between the mean CoT directions of every pair of layers: a block "
        "structure means neighbouring layers share one direction.",
        plot_layer_cosine(cos), 760, 680))

    stability = split_half_stability(pq, n_splits=n_splits, seed=seed)
    norms = vector.norms()
    rel = vector.relative_norms()
    split_half = SplitHalfNumbers(
        per_layer=_rl(stability),
        min=_r(stability.min()), argmin=int(stability.argmin()),
        max=_r(stability.max()), argmax=int(stability.argmax()),
        at_layer=_r(stability[layer]),
        n_splits=n_splits,
    )
    norm = NormNumbers(_rl(norms, 3), _rl(rel) if rel is not None else None)
    figs.append(FigureSpec(
        "split_half", "Split-half stability per layer",
        f"cos(mean of half A, mean of half B) over {n_splits} random halves of the questions, per "
        "layer (left axis), with ‖v‖/‖resid‖ (left axis) and ‖v‖ (right axis).",
        plot_split_half(stability, norms, vector.resid_norm), 900, 520))

    pw = pairwise_cosine_stats(pq, layer)
    pairwise = PairwiseNumbers(_r(pw.mean_pairwise), _r(pw.std_pairwise), _r(pw.cos_with_mean.mean()))
    sources = list(vector.metadata.question_sources) or ["custom"] * pq.shape[0]
    src = cosine_by_source(pq, sources, layer)
    source_numbers = SourceNumbers(list(src.sources), src.counts.tolist(), [_rl(row, 3) for row in src.between],
                                   _rl(src.within, 3))
    figs.append(FigureSpec(
        "source_cosine", f"Cosine between per-source mean vectors (layer {layer})",
        f"Cosine between the mean per-question vectors of each corpus source at layer {layer}; "
        "hover shows the mean pairwise cosine within a source. Near 1 off the diagonal means "
        "one shared direction.",
        plot_source_cosine(src), 700, 600))

    pca = pca_per_question(pq, layer, n_components=min(10, pq.shape[0]))
    align = alignment_with_direction(pca, vector.directions[layer])
    pca_numbers = PCANumbers(_rl(pca.explained_variance_ratio), _r(align[0]), pca.centered)
    questions = list(vector.metadata.questions) or None
    if pca.projections.shape[1] >= 2:
        figs.append(FigureSpec(
            "pca_scatter", f"PCA of per-question vectors (layer {layer})",
            f"Per-question vectors v(q) at layer {layer}, mean-centred, on their first two principal "
            "components, coloured by source; hover shows the question.",
            plot_pca_scatter(pca, sources, questions), 900, 650))
    figs.append(FigureSpec(
        "pca_variance", f"PCA explained variance (layer {layer})",
        "Fraction of the variance of the centred per-question vectors captured by each principal "
        "component, with the cumulative sum.",
        plot_explained_variance(pca), 800, 500))
    return figs, StructureNumbers(layer, int(pq.shape[0]), layer_cos, split_half, norm, pairwise, source_numbers,
                                  pca_numbers)


def trace_figures(model, vector, question: str, layer: int, generation=None, *,
                  template=None) -> tuple[list[FigureSpec], TraceNumbers, list[TraceResult]]:
    """Projection trace of one question answered from the CoT and from the direct prompt.

    Args:
        model: The bridge.
        vector: A :class:`~lens_steer.method.vectors.SteeringVector` (or direction tensor).
        question: Question text.
        layer: Block whose ``hook_resid_post`` is projected.
        generation: A :class:`~lens_steer.config.GenerationConfig`.
        template: Prompt templates.

    Returns:
        ``(figures, numbers, [cot_trace, direct_trace])``.
    """
    traces = [projection_trace(model, question, vector, layer, style, generation, template=template)
              for style in ("cot", "direct")]
    styles = [TraceStyleNumbers(tr.n_response,
                                _r(tr.response_projections.mean()) if tr.response_projections.numel() else None,
                                _r(tr.prompt_projections[-1]), tr.response) for tr in traces]
    numbers = TraceNumbers(question, layer, *styles)
    fig = plot_trace(traces, prompt_tokens=TRACE_PROMPT_TOKENS)
    return [FigureSpec(
        "projection_trace", "Projection trace: CoT vs direct prompt",
        f"Projection of blocks.{layer}.hook_resid_post onto the unit CoT direction at each token, for one "
        f"question answered from the CoT prompt and from the direct prompt (last {TRACE_PROMPT_TOKENS} "
        "prompt tokens at x < 0, response from x = 0).",
        fig, 1100, 520)], numbers, traces


def ablation_name(layers: Sequence[int] | None) -> str:
    """Figure name of an ablation at ``layers``: ``ablation_all``, ``ablation_layer15``,
    ``ablation_layers10-20`` (contiguous) or ``ablation_layers3_7_9``."""
    if layers is None:
        return "ablation_all"
    layers = list(layers)
    if len(layers) == 1:
        return f"ablation_layer{layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"ablation_layers{layers[0]}-{layers[-1]}"
    return "ablation_layers" + "_".join(str(x) for x in layers)


def ablation_figures(model, vector, questions: Sequence, layers: Sequence[int] | None, generation=None, *,
                     template=None, seed: int = 0,
                     progress: bool = False) -> tuple[list[FigureSpec], AblationNumbers, AblationResult]:
    """Direction ablation on CoT prompts against a random control of the same norm.

    Args:
        model: The bridge.
        vector: A :class:`~lens_steer.method.vectors.SteeringVector` (or direction tensor).
        questions: Questions (see :func:`~lens_steer.analysis.direction_ablation`).
        layers: Layers to ablate at; None means all.
        generation: A :class:`~lens_steer.config.GenerationConfig`.
        template: Prompt templates.
        seed: Seed of the random control direction.
        progress: Show progress bars.

    Returns:
        ``(figures, numbers, result)``; the figure is named by :func:`ablation_name`.
    """
    result = direction_ablation(model, questions, vector, layers, generation, template=template,
                                control=True, control_seed=seed, progress=progress)
    numbers = AblationNumbers(list(result.layers), len(result.question_ids), result.max_new_tokens, seed,
                              {n: {k: _r(v, 3) for k, v in c.items()} for n, c in result.summary().items()})
    where = "every layer" if layers is None else (
        f"layer {result.layers[0]}" if len(result.layers) == 1 else f"layers {', '.join(map(str, result.layers))}")
    return [FigureSpec(
        ablation_name(layers), f"Direction ablation at {where} vs random control",
        f"CoT-prompted answers ({len(result.question_ids)} questions): mean length (± s.e.), CoT-style rate "
        "(scoring.is_cot_style) and rate of responses stuck in a loop (distinct token-trigram ratio < 0.2), "
        f"unmodified (baseline), with each layer's CoT direction projected out of hook_resid_post at {where} "
        "(ablated), and with a random direction of the same norm projected out there instead (random).",
        plot_ablation(result), 1200, 480)], numbers, result


def paper_figures(
    model,
    vector,
    layer: int,
    *,
    trace_question: str | None = None,
    ablation_questions: Sequence | None = None,
    ablation_layers: Sequence[Sequence[int] | None] = (None,),
    generation=None,
    template=None,
    k: int = 10,
    seed: int = 0,
    n_splits: int = 100,
    lens_random: int = LENS_RANDOM_DIRECTIONS,
    token_groups: Mapping[str, Sequence[str]] = DEFAULT_TOKEN_GROUPS,
    progress: bool = False,
) -> PaperFigures:
    """Every figure of the issue for one vector: structure, logit lens, trace and ablation.

    Args:
        model: The bridge the vector was derived on (or None: only the structure figures).
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`.
        layer: Analysis layer (sources, PCA, trace).
        trace_question: Question of the projection trace (None skips it).
        ablation_questions: Questions of the ablation (None or empty skips it).
        ablation_layers: One ablation (figure) per entry: the layers to project the direction
            out at, or None for every layer.
        generation: Generation settings of the trace and the ablation.
        template: Prompt templates.
        k: Logit-lens tokens per layer and end (the HTML tables).
        seed: Seed of the random controls and the split halves.
        n_splits: Split-half repetitions.
        lens_random: Random directions per layer behind the main logit-lens figure's band.
        token_groups: Token groups of the main logit-lens figure.
        progress: Show progress bars.

    Returns:
        A :class:`PaperFigures`; groups that cannot be built are listed in ``skipped``.
    """
    out = PaperFigures()
    try:
        figs, nums = structure_figures(vector, layer, n_splits=n_splits, seed=seed)
        out.figures += figs
        out.numbers.structure = nums
    except ValueError as exc:
        out.skipped["structure"] = str(exc)
    if model is None:
        out.skipped["model"] = "no model given: logit lens, trace and ablation need one"
        return out
    token_figs, token_nums = [], None
    try:
        token_figs, token_nums = token_set_figures(model, vector, seed=seed, n_random=lens_random,
                                                   token_groups=token_groups)
    except ValueError as exc:
        out.skipped["logit_lens"] = str(exc)
    figs, nums = logit_lens_figures(model, vector, k=k, seed=seed)
    out.figures += token_figs + figs
    out.numbers.logit_lens = replace(nums, token_set=token_nums)
    if trace_question:
        figs, nums, out.traces = trace_figures(model, vector, trace_question, layer, generation, template=template)
        out.figures += figs
        out.numbers.trace = nums
    else:
        out.skipped["projection_trace"] = "no trace question"
    if ablation_questions and ablation_layers:
        out.numbers.ablation = {}
        for layers in ablation_layers:
            figs, nums, result = ablation_figures(model, vector, ablation_questions, layers, generation,
                                                  template=template, seed=seed, progress=progress)
            out.figures += figs
            out.numbers.ablation[figs[0].name] = nums
            out.ablations[figs[0].name] = result
    else:
        out.skipped["ablation"] = "no ablation questions or layers"
    return out
