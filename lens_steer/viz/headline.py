"""The headline numbers of a figures run, typed, with the JSON of ``summary.json`` and the
Markdown bullets of its README. Pure: nothing here computes an analysis or writes a file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

__all__ = [
    "AblationNumbers",
    "GroupCurve",
    "HeadlineNumbers",
    "LogitLensNumbers",
    "StructureNumbers",
    "TokenSetNumbers",
    "TraceNumbers",
    "TraceStyleNumbers",
    "headline_lines",
    "rounded",
    "rounded_list",
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


@dataclass
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


def _fmt_tokens(tokens: Sequence[str], n: int = 6) -> str:
    shown = [json.dumps(t, ensure_ascii=False) for t in tokens[:n]]
    return ", ".join(s.replace("|", "\\|") for s in shown)


def _layers_text(layers: Sequence[int]) -> str:
    """``layer 15``, ``layers 0–29`` or ``layers 3, 7``."""
    layers = list(layers)
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}–{layers[-1]}"
    return "layers " + ", ".join(str(x) for x in layers)


def _structure_lines(st: StructureNumbers) -> list[str]:
    sh, layer = st.split_half, st.layer
    lines = [f"- Split-half stability (cos of the two half means, {sh.n_splits} splits, "
             f"{st.n_questions} questions): {sh.min:.3f} (layer {sh.argmin}) to "
             f"{sh.max:.3f} (layer {sh.argmax}); {sh.at_layer:.3f} at layer {layer}."]
    rel = st.norm.relative_per_layer
    if rel:
        lines.append(f"- ‖v‖/‖resid‖ at layer {layer}: {rel[layer]:.3f} (range {min(rel):.3f}–{max(rel):.3f}).")
    lc = st.layer_cosine
    lines.append(f"- Adjacent-layer cosine of the direction: mean {lc.adjacent_mean:.3f}, min {lc.adjacent_min:.3f}.")
    pw = st.pairwise
    lines.append(f"- Per-question vectors at layer {layer}: mean pairwise cosine {pw.mean:.3f} "
                 f"(sd {pw.std:.3f}); mean cosine with the CoT direction {pw.cos_with_mean_mean:.3f}.")
    src = st.sources
    if len(src.names) > 1:
        pairs = [f"{a}–{b} {src.between[i][j]:.3f}" for i, a in enumerate(src.names)
                 for j, b in enumerate(src.names) if j > i]
        lines.append(f"- Between-source cosine of mean vectors at layer {layer}: " + ", ".join(pairs) + ".")
    evr = st.pca.explained_variance_ratio
    lines.append(f"- PCA at layer {layer} (centred): PC1 explains {evr[0]:.1%}, PC2 {evr[1]:.1%}"
                 if len(evr) > 1 else f"- PCA at layer {layer}: PC1 explains {evr[0]:.1%}")
    lines[-1] += f"; |cos(PC1, CoT direction)| = {st.pca.pc1_abs_cos_with_mean_direction:.3f}."
    return lines


def _token_set_lines(ts: TokenSetNumbers, layer: str) -> list[str]:
    band = f"random {ts.quantiles[0]:.0%}–{ts.quantiles[1]:.0%}"
    i = int(layer)
    parts = [f"{g} mean score {ts.scores[g].direction[i]:.2f} ({band}: {ts.scores[g].random_low[i]:.2f} to "
             f"{ts.scores[g].random_high[i]:.2f}), rank (geometric mean) {ts.ranks[g].direction[i]:,.0f} of "
             f"{ts.d_vocab:,} (random mean {ts.ranks[g].random_mean[i]:,.0f})" for g in ts.scores]
    lines = [f"- Token-set lens, layer {layer}: " + "; ".join(parts) + "."]
    above = [f"{g}: {_layers_text(ts.above_band(g)) if ts.above_band(g) else 'none'}" for g in ts.scores]
    lines.append(f"- Layers where a group's mean score is above the random band: {'; '.join(above)}.")
    if ts.dropped:
        lines.append(f"- Token-set lens left out: {_fmt_tokens(list(ts.dropped), 12)} (reasons in `summary.json`).")
    return lines


def headline_lines(numbers: HeadlineNumbers) -> list[str]:
    """Markdown bullet lines with the key numbers (for a figures README)."""
    st = numbers.structure
    lines = _structure_lines(st) if st else []
    ll = numbers.logit_lens
    if ll:
        layer = str(st.layer) if st else next(iter(ll.top_tokens))
        if ll.token_set is not None:
            lines += _token_set_lines(ll.token_set, layer)
        lines.append(f"- Logit lens, layer {layer}, top tokens: {_fmt_tokens(ll.top_tokens[layer])}; "
                     f"random control: {_fmt_tokens(ll.control_top_tokens[layer])}.")
        lines.append(f"- Logit lens, layer {layer}, bottom tokens: {_fmt_tokens(ll.bottom_tokens[layer])}.")
        last = list(ll.top_tokens)[-1]
        if last != layer:
            lines.append(f"- Logit lens, last layer ({last}), top tokens: {_fmt_tokens(ll.top_tokens[last])}; "
                         f"random control: {_fmt_tokens(ll.control_top_tokens[last])}.")
        lines.append(f"- Largest top-1 lens score over layers: {ll.top_score_max:.3f} "
                     f"(random control: {ll.control_top_score_max:.3f}).")
    tr = numbers.trace
    if tr:
        def proj(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.2f}"

        lines.append(f"- Projection trace at layer {tr.layer}: mean projection over the response "
                     f"{proj(tr.cot.mean_response_projection)} (CoT prompt, {tr.cot.n_response_tokens} tokens) vs "
                     f"{proj(tr.direct.mean_response_projection)} (direct prompt, "
                     f"{tr.direct.n_response_tokens} tokens).")
    for ab in (numbers.ablation or {}).values():
        parts = [f"{n}: {v['mean_tokens']:.1f} tokens, {v['cot_rate']:.0%} CoT style, "
                 f"{v['repetitive_rate']:.0%} repetitive, {v['truncated_rate']:.0%} cut at {ab.max_new_tokens}"
                 for n, v in ab.conditions.items()]
        lines.append(f"- Ablation at {_layers_text(ab.layers)} ({ab.n_questions} CoT prompts): "
                     + "; ".join(parts) + ".")
    return lines
