"""The headline numbers of a figures run: typed, read off a :class:`~lens_steer.analysis.paper.VectorAnalysis`
(rounded for the JSON) by :func:`headline_numbers`, with the JSON of ``summary.json``. Pure: nothing
here runs a model or writes a file (the README's bullets are :func:`lens_steer.viz.readme.headline_lines`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from torch import Tensor

from lens_steer.analysis.paper import AblationAnalysis, LensAnalysis, TraceAnalysis, VectorAnalysis, VectorStructure
from lens_steer.analysis.token_set_lens import TokenSetLens

__all__ = [
    "AblationNumbers",
    "GroupCurve",
    "HeadlineNumbers",
    "LogitLensNumbers",
    "StructureNumbers",
    "TokenSetNumbers",
    "TraceNumbers",
    "TraceStyleNumbers",
    "ablation_numbers",
    "headline_numbers",
    "lens_numbers",
    "rounded",
    "rounded_list",
    "structure_numbers",
    "token_set_numbers",
    "trace_numbers",
]


def rounded(x: float, nd: int = 4) -> float:
    """A number (or 0-d tensor) as a float rounded to ``nd`` decimals, for the JSON."""
    return round(float(x), nd)


def rounded_list(t, nd: int = 4) -> list[float]:
    """A 1-d tensor as a list of rounded floats."""
    return [rounded(v, nd) for v in t.detach().cpu().float().tolist()]


@dataclass(frozen=True)
class LayerCosineNumbers:
    """Adjacent-layer cosine of the direction, and one layer's row (JSON key ``layer<L>_vs_all``)."""

    layer: int
    adjacent_mean: float
    adjacent_min: float
    vs_all: list[float]

    def to_dict(self) -> dict:
        return {"adjacent_mean": self.adjacent_mean, "adjacent_min": self.adjacent_min,
                f"layer{self.layer}_vs_all": self.vs_all}

    @classmethod
    def from_dict(cls, data: Mapping, layer: int) -> LayerCosineNumbers:
        return cls(layer, data["adjacent_mean"], data["adjacent_min"], list(data[f"layer{layer}_vs_all"]))


@dataclass(frozen=True)
class SplitHalfNumbers:
    """Split-half stability per layer, its extremes and the value at the analysis layer."""

    per_layer: list[float]
    min: float
    argmin: int
    max: float
    argmax: int
    at_layer: float
    n_splits: int


@dataclass(frozen=True)
class NormNumbers:
    """‖v‖ per layer and ‖v‖/‖resid‖ per layer (None when the vector has no residual norms)."""

    per_layer: list[float]
    relative_per_layer: list[float] | None = None

    def to_dict(self) -> dict:
        out: dict = {"per_layer": self.per_layer}
        if self.relative_per_layer is not None:
            out["relative_per_layer"] = self.relative_per_layer
        return out


@dataclass(frozen=True)
class PairwiseNumbers:
    """Pairwise cosine of per-question vectors, and their mean cosine with the direction."""

    mean: float
    std: float
    cos_with_mean_mean: float


@dataclass(frozen=True)
class SourceNumbers:
    """Per-source counts and the cosines between / within per-source mean vectors."""

    names: list[str]
    counts: list[int]
    between: list[list[float]]
    within: list[float]


@dataclass(frozen=True)
class PCANumbers:
    """PCA of the per-question vectors at the analysis layer."""

    explained_variance_ratio: list[float]
    pc1_abs_cos_with_mean_direction: float
    centered: bool


@dataclass(frozen=True)
class StructureNumbers:
    """Numbers of the figures that need only the vector."""

    layer: int
    n_questions: int
    layer_cosine: LayerCosineNumbers
    split_half: SplitHalfNumbers
    norm: NormNumbers
    pairwise: PairwiseNumbers
    sources: SourceNumbers
    pca: PCANumbers

    def to_dict(self) -> dict:
        return {"layer": self.layer, "n_questions": self.n_questions, "layer_cosine": self.layer_cosine.to_dict(),
                "split_half": asdict(self.split_half), "norm": self.norm.to_dict(),
                "pairwise": asdict(self.pairwise), "sources": asdict(self.sources), "pca": asdict(self.pca)}

    @classmethod
    def from_dict(cls, data: Mapping) -> StructureNumbers:
        norm = data["norm"]
        return cls(data["layer"], data["n_questions"], LayerCosineNumbers.from_dict(data["layer_cosine"], data["layer"]),
                   SplitHalfNumbers(**data["split_half"]),
                   NormNumbers(norm["per_layer"], norm.get("relative_per_layer")),
                   PairwiseNumbers(**data["pairwise"]), SourceNumbers(**data["sources"]), PCANumbers(**data["pca"]))


@dataclass(frozen=True)
class LogitLensNumbers:
    """Tokens each layer's direction promotes / suppresses, beside a random control."""

    norm_kind: str
    k: int
    control_seed: int
    top_tokens: dict[str, list[str]]
    bottom_tokens: dict[str, list[str]]
    control_top_tokens: dict[str, list[str]]
    top_score_max: float
    control_top_score_max: float
    top_overlap_with_control: list[float]
    token_set: TokenSetNumbers | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> LogitLensNumbers:
        ts = data.get("token_set")
        return cls(**{k: v for k, v in data.items() if k != "token_set"},
                   token_set=TokenSetNumbers.from_dict(ts) if ts else None)


@dataclass(frozen=True)
class GroupCurve:
    """One token group's per-layer value under the CoT direction and the random directions' band."""

    direction: list[float]
    random_low: list[float]
    random_mean: list[float]
    random_high: list[float]


@dataclass(frozen=True)
class TokenSetNumbers:
    """The main logit-lens figure: each token group's mean score and geometric mean rank per layer
    against random directions of the same norm (band = the ``quantiles`` of ``n_random`` draws, ``seed``)."""

    tokens: dict[str, list[str]]
    dropped: dict[str, str]
    n_random: int
    quantiles: list[float]
    seed: int
    d_vocab: int
    scores: dict[str, GroupCurve]
    ranks: dict[str, GroupCurve]

    def above_band(self, group: str) -> list[int]:
        """Layers where the group's mean score is above the random band."""
        curve = self.scores[group]
        return [i for i, (v, hi) in enumerate(zip(curve.direction, curve.random_high, strict=True)) if v > hi]

    @classmethod
    def from_dict(cls, data: Mapping) -> TokenSetNumbers:
        curves = {key: {g: GroupCurve(**c) for g, c in data[key].items()} for key in ("scores", "ranks")}
        return cls(**{k: v for k, v in data.items() if k not in curves}, **curves)


@dataclass(frozen=True)
class TraceStyleNumbers:
    """One prompt style's projection trace."""

    n_response_tokens: int
    mean_response_projection: float | None
    last_prompt_projection: float
    response: str


@dataclass(frozen=True)
class TraceNumbers:
    """Projection trace of one question from the CoT and the direct prompt."""

    question: str
    layer: int
    cot: TraceStyleNumbers
    direct: TraceStyleNumbers

    @classmethod
    def from_dict(cls, data: Mapping) -> TraceNumbers:
        return cls(data["question"], data["layer"], TraceStyleNumbers(**data["cot"]),
                   TraceStyleNumbers(**data["direct"]))


@dataclass(frozen=True)
class AblationNumbers:
    """One ablation: its layers and per-condition means (``baseline``, ``ablated``, ``random``)."""

    layers: list[int]
    n_questions: int
    max_new_tokens: int
    control_seed: int
    conditions: dict[str, dict[str, float]]


@dataclass(frozen=True)
class HeadlineNumbers:
    """Every group's numbers; a group not built is None (and absent from the JSON)."""

    structure: StructureNumbers | None = None
    logit_lens: LogitLensNumbers | None = None
    trace: TraceNumbers | None = None
    ablation: dict[str, AblationNumbers] | None = None

    def to_dict(self) -> dict:
        """The JSON of ``summary.json`` (groups in this order, only those built)."""
        out: dict = {}
        if self.structure is not None:
            out["structure"] = self.structure.to_dict()
        if self.logit_lens is not None:
            out["logit_lens"] = asdict(self.logit_lens)
        if self.trace is not None:
            out["trace"] = asdict(self.trace)
        if self.ablation is not None:
            out["ablation"] = {name: asdict(ab) for name, ab in self.ablation.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> HeadlineNumbers:
        """Read the numbers back from a ``summary.json`` mapping (other keys are ignored)."""
        return cls(
            StructureNumbers.from_dict(data["structure"]) if data.get("structure") else None,
            LogitLensNumbers.from_dict(data["logit_lens"]) if data.get("logit_lens") else None,
            TraceNumbers.from_dict(data["trace"]) if data.get("trace") else None,
            {n: AblationNumbers(**ab) for n, ab in data["ablation"].items()} if "ablation" in data else None,
        )


def structure_numbers(st: VectorStructure) -> StructureNumbers:
    """The numbers of the figures that need only the vector."""
    layer, stability, pw, src, pca = st.layer, st.split_half, st.pairwise, st.sources, st.pca
    return StructureNumbers(
        layer, st.n_questions,
        LayerCosineNumbers(layer, rounded(st.adjacent_cosine.mean()), rounded(st.adjacent_cosine.min()),
                           rounded_list(st.layer_cosine[layer], 3)),
        SplitHalfNumbers(per_layer=rounded_list(stability), min=rounded(stability.min()),
                         argmin=int(stability.argmin()), max=rounded(stability.max()), argmax=int(stability.argmax()),
                         at_layer=rounded(stability[layer]), n_splits=st.n_splits),
        NormNumbers(rounded_list(st.norms, 3),
                    rounded_list(st.relative_norms) if st.relative_norms is not None else None),
        PairwiseNumbers(rounded(pw.mean_pairwise), rounded(pw.std_pairwise), rounded(pw.cos_with_mean.mean())),
        SourceNumbers(list(src.sources), src.counts.tolist(), [rounded_list(row, 3) for row in src.between],
                      rounded_list(src.within, 3)),
        PCANumbers(rounded_list(pca.explained_variance_ratio), rounded(st.pc_alignment[0]), pca.centered))


def _curves(values: Tensor, band: tuple[Tensor, Tensor, Tensor], groups: Sequence[str],
            nd: int) -> dict[str, GroupCurve]:
    low, mean, high = band
    return {g: GroupCurve(rounded_list(values[:, i], nd), rounded_list(low[:, i], nd), rounded_list(mean[:, i], nd),
                          rounded_list(high[:, i], nd)) for i, g in enumerate(groups)}


def token_set_numbers(result: TokenSetLens, seed: int) -> TokenSetNumbers:
    """The headline numbers of a token-set lens (``seed``: the one its random directions came from)."""
    ts = result.token_set
    return TokenSetNumbers(
        tokens={g: ts.members(g) for g in ts.groups},
        dropped={d.text: f"{d.group}: {d.reason}" for d in ts.dropped},
        n_random=result.n_random, quantiles=list(result.quantiles), seed=seed, d_vocab=result.d_vocab,
        scores=_curves(result.group_scores, result.band("score"), ts.groups, 4),
        ranks=_curves(result.group_ranks, result.band("rank"), ts.groups, 1),
    )


def lens_numbers(lens: LensAnalysis, layers: Sequence[int] | None = None) -> LogitLensNumbers:
    """Tokens each layer's direction promotes / suppresses beside the control (``layers``: default all), and
    the token-set lens's numbers when it was computed."""
    rows = list(range(lens.lens.n_layers)) if layers is None else list(layers)
    return LogitLensNumbers(
        norm_kind=lens.norm_kind, k=lens.k, control_seed=lens.seed,
        top_tokens={str(layer): lens.lens.top_tokens[layer] for layer in rows},
        bottom_tokens={str(layer): lens.lens.bottom_tokens[layer] for layer in rows},
        control_top_tokens={str(layer): lens.control.top_tokens[layer] for layer in rows},
        top_score_max=rounded(lens.lens.top_scores[:, 0].max(), 3),
        control_top_score_max=rounded(lens.control.top_scores[:, 0].max(), 3),
        top_overlap_with_control=rounded_list(lens.top_overlap, 2),
        token_set=None if lens.token_set is None else token_set_numbers(lens.token_set, lens.seed),
    )


def trace_numbers(trace: TraceAnalysis) -> TraceNumbers:
    """Length and mean projection of the CoT and the direct answer."""
    styles = [TraceStyleNumbers(tr.n_response,
                                rounded(tr.response_projections.mean()) if tr.response_projections.numel() else None,
                                rounded(tr.prompt_projections[-1]), tr.response) for tr in (trace.cot, trace.direct)]
    return TraceNumbers(trace.question, trace.layer, *styles)


def ablation_numbers(ablation: AblationAnalysis) -> AblationNumbers:
    """One ablation's layers and per-condition means."""
    result = ablation.result
    return AblationNumbers(list(result.layers), len(result.question_ids), result.max_new_tokens, ablation.seed,
                           {n: {k: rounded(v, 3) for k, v in c.items()} for n, c in result.summary().items()})


def headline_numbers(analysis: VectorAnalysis) -> HeadlineNumbers:
    """Every group's numbers (ablations keyed by their names, :func:`~lens_steer.analysis.paper.ablation_name`)."""
    return HeadlineNumbers(
        None if analysis.structure is None else structure_numbers(analysis.structure),
        None if analysis.lens is None else lens_numbers(analysis.lens),
        None if analysis.trace is None else trace_numbers(analysis.trace),
        {a.name: ablation_numbers(a) for a in analysis.ablations}
        if analysis.ablations else None,
    )
