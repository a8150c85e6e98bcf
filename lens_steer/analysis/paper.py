"""Everything the paper figures show, computed in one call: :func:`analyse_vector` (settings from
:func:`resolve_figure_settings`; or its keyword form :func:`paper_analysis`) returns a frozen
:class:`VectorAnalysis`. The model is run only here, through the lens, trace and ablation functions;
:mod:`lens_steer.viz` draws the result without it. Writes nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.analysis.logit_lens import (
    LogitLensResult,
    direction_logit_lens,
    random_direction_control,
    token_overlap,
)
from lens_steer.analysis.pca import PCAResult, alignment_with_direction, pca_per_question
from lens_steer.analysis.similarity import (
    PairwiseCosineStats,
    SourceCosineResult,
    cosine_by_source,
    layer_cosine_matrix,
    pairwise_cosine_stats,
    split_half_stability,
)
from lens_steer.analysis.token_set_lens import DEFAULT_TOKEN_GROUPS, TokenSetLens, resolve_token_set, token_set_lens
from lens_steer.analysis.trace import AblationResult, TraceResult, direction_ablation, projection_trace
from lens_steer.config import default_layer

__all__ = ["LENS_RANDOM_DIRECTIONS", "AblationAnalysis", "FigureSettings", "LensAnalysis", "Skipped",
           "TraceAnalysis", "VectorAnalysis", "VectorStructure", "ablation_name", "analyse_vector", "paper_analysis",
           "resolve_figure_settings", "vector_structure"]

LENS_RANDOM_DIRECTIONS = 100
"""Random directions per layer behind the band of the main logit-lens figure."""


@dataclass(frozen=True)
class FigureSettings:
    """What ``lens-steer figures`` (or a Python caller) ran with, every default resolved.

    Attributes:
        model: Model id or path the figures were made on. layer: Analysis layer.
        trace_question: Question of the projection trace ("" when skipped).
        ablation_questions: Questions ablated. ablation_file: Their file (None: packaged demo questions).
        ablation_layers: One entry per ablation figure: ``"all"`` or comma-separated layers.
        max_new_tokens / batch_size: Generation of the trace and ablations.
        top_k: Logit-lens tokens per end. n_splits: Split-half repetitions. seed: Seed of controls and draws.
        device / dtype: Where the model ran. allow_other_model: Vector from another checkpoint accepted.
    """

    model: str
    layer: int
    trace_question: str
    ablation_questions: int
    ablation_file: str | None
    ablation_layers: tuple[str, ...]
    max_new_tokens: int
    batch_size: int
    top_k: int
    n_splits: int
    seed: int
    device: str = "cpu"
    dtype: str = "float32"
    allow_other_model: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (the ``settings`` object of ``summary.json``)."""
        out = asdict(self)
        out["ablation_layers"] = list(self.ablation_layers)
        return out

    def lines(self) -> list[str]:
        """Markdown bullets for the README."""
        return [f"- {k.replace('_', ' ')}: {', '.join(v) if isinstance(v, list) else v}"
                for k, v in self.to_dict().items()]


def resolve_figure_settings(
    model_name: str, n_layers: int, *, layer: int | None = None, trace_question: str | None = None,
    ablation_questions: int = 16, ablation_file: str | os.PathLike[str] | None = None,
    ablation_layers: Sequence[str] | None = None, max_new_tokens: int = 128, batch_size: int = 8, top_k: int = 10,
    n_splits: int = 100, seed: int = 0, device: str = "cpu", dtype: str = "float32", allow_other_model: bool = False,
) -> FigureSettings:
    """:class:`FigureSettings` with every default filled in.

    Args:
        model_name: The model's id or path. n_layers: Its depth.
        layer: Analysis layer (default: :func:`~lens_steer.config.default_layer`).
        trace_question: Question of the projection trace (None: the first packaged held-out demo
            question; ``""`` skips the trace).
        ablation_layers: One entry per ablation figure, ``"all"`` or comma-separated layers (default:
            ``"all"`` and the analysis layer).
        The rest: see :class:`FigureSettings`.
    """
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl

    layer = layer if layer is not None else default_layer(model_name, n_layers)
    if trace_question is None:
        trace_question = load_questions_jsonl(demo_questions_path("heldout"))[0].question
    return FigureSettings(
        model=model_name, layer=layer, trace_question=trace_question, ablation_questions=ablation_questions,
        ablation_file=None if ablation_file is None else str(ablation_file),
        ablation_layers=tuple(ablation_layers or ("all", str(layer))), max_new_tokens=max_new_tokens,
        batch_size=batch_size, top_k=top_k, n_splits=n_splits, seed=seed, device=device, dtype=dtype,
        allow_other_model=allow_other_model)


@dataclass(frozen=True)
class VectorStructure:
    """What the vector alone shows (no model): its layers' agreement, stability, norms, sources and PCA.

    Attributes:
        layer: The analysis layer (sources, pairwise cosine, PCA). n_questions: Per-question vectors.
        layer_cosine: ``[layer, layer]`` cosine of the mean directions. adjacent_cosine: Its first off-diagonal.
        split_half: Per-layer cosine of the two half means over ``n_splits`` random halves.
        norms: ‖v‖ per layer. relative_norms: ‖v‖/‖resid‖ per layer (None without residual norms).
        resid_norm: The vector's mean residual norm per layer (None when not recorded).
        pairwise: Pairwise cosine of the per-question vectors at ``layer``.
        sources: Cosine between / within the per-source mean vectors at ``layer``.
        source_labels: Each question's source. questions: Each question's text (None when not recorded).
        pca: PCA of the per-question vectors at ``layer``. pc_alignment: ``|cos|`` of each PC with the direction.
    """

    layer: int
    n_questions: int
    layer_cosine: Float[Tensor, "layer layer"]
    adjacent_cosine: Float[Tensor, " pair"]
    split_half: Float[Tensor, " layer"]
    n_splits: int
    norms: Float[Tensor, " layer"]
    relative_norms: Float[Tensor, " layer"] | None
    resid_norm: Float[Tensor, " layer"] | None
    pairwise: PairwiseCosineStats
    sources: SourceCosineResult
    source_labels: tuple[str, ...]
    questions: tuple[str, ...] | None
    pca: PCAResult
    pc_alignment: Float[Tensor, " component"]


@dataclass(frozen=True)
class LensAnalysis:
    """Every layer's direction under the unembedding, beside random directions of the same norm.

    Attributes:
        norm_kind: The final norm (``"rms"``, ``"layer"``, ``"none"``). k: Tokens kept per layer and end.
        seed: Seed of the random control and the token-set band.
        lens: Top / bottom tokens of each layer's direction. control: The same of one random direction.
        top_overlap: Per-layer overlap of ``lens``'s and ``control``'s top tokens.
        token_set: Token groups' scores and ranks against the random band (None: no group has a token here).
    """

    norm_kind: str
    k: int
    seed: int
    lens: LogitLensResult
    control: LogitLensResult
    top_overlap: Float[Tensor, " layer"]
    token_set: TokenSetLens | None


@dataclass(frozen=True)
class TraceAnalysis:
    """Projection trace of one question answered from the CoT prompt and from the direct prompt."""

    question: str
    layer: int
    cot: TraceResult
    direct: TraceResult


def ablation_name(layers: Sequence[int] | None) -> str:
    """Name of an ablation at ``layers`` (its figure, numbers and per-question file): ``ablation_all``,
    ``ablation_layer15``, ``ablation_layers10-20`` (contiguous) or ``ablation_layers3_7_9``."""
    if layers is None:
        return "ablation_all"
    layers = list(layers)
    if len(layers) == 1:
        return f"ablation_layer{layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"ablation_layers{layers[0]}-{layers[-1]}"
    return "ablation_layers" + "_".join(str(x) for x in layers)


@dataclass(frozen=True)
class AblationAnalysis:
    """One direction ablation: the layers asked for (None: every layer), its control seed, the result."""

    requested_layers: tuple[int, ...] | None
    seed: int
    result: AblationResult

    @property
    def name(self) -> str:
        """What its figure, numbers and per-question file are called (:func:`ablation_name`)."""
        return ablation_name(self.requested_layers)


@dataclass(frozen=True)
class Skipped:
    """A group of figures not built (``"structure"``, ``"model"``, ``"logit_lens"``, ...), and why."""

    group: str
    reason: str


@dataclass(frozen=True)
class VectorAnalysis:
    """Everything the paper figures of one vector show; a group not computed is None (or empty) and,
    where it was asked for, listed in ``skipped`` (in the order met)."""

    layer: int
    structure: VectorStructure | None = None
    lens: LensAnalysis | None = None
    trace: TraceAnalysis | None = None
    ablations: tuple[AblationAnalysis, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def vector_structure(vector, layer: int, *, n_splits: int = 100, seed: int = 0) -> VectorStructure:
    """The analyses that need only the vector: layer cosine, split-half stability, sources, PCA.

    Args:
        vector: A :class:`~lens_steer.method.vectors.SteeringVector` with ``per_question`` (two or more).
        layer: Layer of the source, pairwise and PCA analyses.
        n_splits: Random half splits of the stability estimate. seed: Their seed.

    Raises:
        ValueError: If ``per_question`` is missing or has fewer than two questions.
    """
    pq = vector.per_question
    if pq is None or pq.shape[0] < 2:
        raise ValueError("the vector has no per-question vectors (or fewer than two): "
                         "split-half, source and PCA figures need them")
    cos = layer_cosine_matrix(vector.directions)
    labels = tuple(vector.metadata.question_sources) or ("custom",) * pq.shape[0]
    pca = pca_per_question(pq, layer, n_components=min(10, pq.shape[0]))
    return VectorStructure(
        layer=layer, n_questions=int(pq.shape[0]), layer_cosine=cos, adjacent_cosine=torch.diagonal(cos, offset=1),
        split_half=split_half_stability(pq, n_splits=n_splits, seed=seed), n_splits=n_splits,
        norms=vector.norms(), relative_norms=vector.relative_norms(), resid_norm=vector.resid_norm,
        pairwise=pairwise_cosine_stats(pq, layer), sources=cosine_by_source(pq, list(labels), layer),
        source_labels=labels, questions=tuple(vector.metadata.questions) or None,
        pca=pca, pc_alignment=alignment_with_direction(pca, vector.directions[layer]))


def _lens(model, vector, *, k: int, seed: int, n_random: int,
          token_groups: Mapping[str, Sequence[str]]) -> tuple[LensAnalysis, Skipped | None]:
    """The logit lens of every layer's direction (tables and token groups), and why the groups were skipped."""
    from lens_steer.models import final_norm, unembedding

    w_u, _ = unembedding(model)
    gain, kind = final_norm(model)
    tok = model.tokenizer
    dirs = vector.directions.float()
    token_set, skipped = None, None
    try:
        ts = resolve_token_set(token_groups, lambda text: tok.encode(text, add_special_tokens=False), w_u.shape[1])
        token_set = token_set_lens(dirs, w_u, ts, generator=torch.Generator().manual_seed(seed), norm_weight=gain,
                                   norm_kind=kind, n_random=n_random)
    except ValueError as exc:
        skipped = Skipped("logit_lens", str(exc))

    def decode(i: int) -> str:
        return tok.decode([i])

    lens = direction_logit_lens(dirs, w_u, norm_weight=gain, norm_kind=kind, k=k, decode=decode)
    control = direction_logit_lens(random_direction_control(dirs, seed), w_u, norm_weight=gain, norm_kind=kind, k=k,
                                   decode=decode)
    return LensAnalysis(kind, k, seed, lens, control, token_overlap(lens, control, "top"), token_set), skipped


def paper_analysis(
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
) -> VectorAnalysis:
    """Every analysis of the paper figures for one vector: structure, logit lens, trace and ablations.

    Args:
        model: The bridge the vector was derived on (or None: the structure alone).
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`.
        layer: Analysis layer (sources, PCA, trace).
        trace_question: Question of the projection trace (None or "" skips it).
        ablation_questions: Questions of the ablations (None or empty skips them).
        ablation_layers: One ablation per entry: the layers to project the direction out at, or None
            for every layer.
        generation: A :class:`~lens_steer.config.GenerationConfig` of the trace and the ablations.
        template: A :class:`~lens_steer.prompts.PromptTemplate`.
        k: Logit-lens tokens per layer and end. seed: Seed of the random controls and the split halves.
        n_splits: Split-half repetitions. lens_random: Random directions per layer of the token-set band.
        token_groups: Token groups of the token-set lens. progress: Show progress bars.

    Returns:
        A :class:`VectorAnalysis`; groups that could not be computed are listed in ``skipped``.
    """
    structure, skipped = None, []
    try:
        structure = vector_structure(vector, layer, n_splits=n_splits, seed=seed)
    except ValueError as exc:
        skipped.append(Skipped("structure", str(exc)))
    if model is None:
        skipped.append(Skipped("model", "no model given: logit lens, trace and ablation need one"))
        return VectorAnalysis(layer, structure, skipped=tuple(skipped))
    lens, lens_skipped = _lens(model, vector, k=k, seed=seed, n_random=lens_random, token_groups=token_groups)
    skipped += [lens_skipped] if lens_skipped else []
    trace = None
    if trace_question:
        cot, direct = (projection_trace(model, trace_question, vector, layer, style, generation, template=template)
                       for style in ("cot", "direct"))
        trace = TraceAnalysis(trace_question, layer, cot, direct)
    else:
        skipped.append(Skipped("projection_trace", "no trace question"))
    ablations = []
    if ablation_questions and ablation_layers:
        for layers in ablation_layers:
            result = direction_ablation(model, ablation_questions, vector, layers, generation, template=template,
                                        control=True, control_seed=seed, progress=progress)
            ablations.append(AblationAnalysis(None if layers is None else tuple(layers), seed, result))
    else:
        skipped.append(Skipped("ablation", "no ablation questions or layers"))
    return VectorAnalysis(layer, structure, lens, trace, tuple(ablations), tuple(skipped))


def analyse_vector(model, vector, settings: FigureSettings, *, progress: bool = True) -> VectorAnalysis:
    """What ``lens-steer figures`` computes: :func:`paper_analysis` with the questions, layers and
    generation of ``settings`` (from :func:`resolve_figure_settings`).

    Args:
        model: The ``TransformerBridge`` (checked against the vector unless ``settings.allow_other_model``).
        vector: A loaded :class:`~lens_steer.method.vectors.SteeringVector`.
        settings: Every default resolved. progress: Show progress bars.

    Raises:
        IndexError: a layer out of range. ModelMismatchError: the vector is another model's.
    """
    from lens_steer.config import GenerationConfig
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.data.registry import subsample
    from lens_steer.models import check_layer

    vector.check_compatible(model, allow_other_model=settings.allow_other_model)
    check_layer(model, settings.layer)
    ablation_layers = [None if spec.strip() == "all" else [check_layer(model, int(x)) for x in spec.split(",")
                                                            if x.strip()]
                       for spec in settings.ablation_layers]
    items = []
    if settings.ablation_questions > 0:
        pool = (load_questions_jsonl(settings.ablation_file) if settings.ablation_file is not None else
                [q for split in ("derive", "heldout") for q in load_questions_jsonl(demo_questions_path(split))])
        items = subsample(pool, settings.ablation_questions, settings.seed)
    return paper_analysis(
        model, vector, settings.layer, trace_question=settings.trace_question or None, ablation_questions=items,
        ablation_layers=ablation_layers, template=vector.metadata.templates,
        generation=GenerationConfig(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size),
        k=settings.top_k, seed=settings.seed, n_splits=settings.n_splits, progress=progress)
