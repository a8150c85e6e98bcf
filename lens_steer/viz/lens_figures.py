"""The logit-lens figures of a CoT vector with their headline numbers; writes nothing.

The main figure (``logit_lens``, PNG and HTML) shows token groups (step and answer markers)
against random directions of the same norm; the top-k token tables are HTML only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lens_steer.analysis import (
    DEFAULT_TOKEN_GROUPS,
    TokenSetLens,
    direction_logit_lens,
    random_direction_control,
    resolve_token_set,
    token_overlap,
    token_set_lens,
)
from lens_steer.viz.figure_spec import FigureSpec
from lens_steer.viz.headline import GroupCurve, LogitLensNumbers, TokenSetNumbers, rounded, rounded_list
from lens_steer.viz.plotting import plot_logit_lens, plot_token_set_lens

__all__ = ["LENS_RANDOM_DIRECTIONS", "logit_lens_figures", "token_set_figures", "token_set_numbers"]

LENS_RANDOM_DIRECTIONS = 100
"""Random directions per layer behind the band of the main logit-lens figure."""
LENS_NORM_TEXT = "direction × final-norm gain γ, then W_U; no 1/RMS, no b_U"
"""How the lens scores a direction (see :func:`~lens_steer.analysis.lens_scores`)."""


def _curves(values: torch.Tensor, band: tuple[torch.Tensor, ...], groups: Sequence[str],
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


def token_set_figures(model, vector, *, seed: int = 0, n_random: int = LENS_RANDOM_DIRECTIONS,
                      token_groups: Mapping[str, Sequence[str]] = DEFAULT_TOKEN_GROUPS,
                      ) -> tuple[list[FigureSpec], TokenSetNumbers]:
    """The main logit-lens figure: token groups' mean score and rank per layer vs random directions.

    Args:
        model: The bridge (for ``W_U``, the final norm and the tokenizer).
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`.
        seed: Seed of the random directions.
        n_random: Random directions per layer.
        token_groups: ``{group: token strings}``; strings that are not one token are left out.

    Returns:
        ``([the "logit_lens" figure], numbers)``.

    Raises:
        ValueError: If no string of any group is a single token of the model's vocabulary.
    """
    from lens_steer.models import final_norm, unembedding

    w_u, _ = unembedding(model)
    gain, kind = final_norm(model)
    ts = resolve_token_set(token_groups, lambda text: model.tokenizer.encode(text, add_special_tokens=False),
                           w_u.shape[1])
    result = token_set_lens(vector.directions.float(), w_u, ts, generator=torch.Generator().manual_seed(seed),
                            norm_weight=gain, norm_kind=kind, n_random=n_random)
    low, high = result.quantiles
    groups = "; ".join(f"{g}: {', '.join(repr(t) for t in ts.members(g))}" for g in ts.groups)
    spec = FigureSpec(
        "logit_lens", "Logit lens: step markers, numerals and answer markers vs random directions",
        f"Mean lens score ({LENS_NORM_TEXT}) and geometric mean rank of each token group under each layer's CoT "
        f"direction, against the {low:.0%}–{high:.0%} band and mean of {n_random} random directions of the "
        f"same norm per layer (seed {seed}). Groups: {groups}. Strings that are not one token of this "
        f"vocabulary are left out ({len(ts.dropped)}; listed in summary.json).",
        plot_token_set_lens(result), 1100, 920)
    return [spec], token_set_numbers(result, seed)


def logit_lens_figures(model, vector, *, k: int = 10, seed: int = 0,
                       layers: Sequence[int] | None = None) -> tuple[list[FigureSpec], LogitLensNumbers]:
    """Top-k token tables of every layer's direction and of a random control of equal norm (HTML only).

    Norm treatment (see :func:`~lens_steer.analysis.direction_logit_lens`): the direction is
    multiplied by the final norm's gain γ (RMSNorm) or centred then multiplied (LayerNorm);
    the 1/RMS scale is dropped because it cannot change a layer's ranking; ``b_U`` is not
    added.

    Args:
        model: The bridge (for ``W_U``, the final norm and the tokenizer).
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`.
        k: Tokens kept at each end per layer.
        seed: Seed of the random control.
        layers: Rows to draw (all layers by default).

    Returns:
        ``(figures, numbers)``: promoted (top) and suppressed (bottom) token tables.
    """
    from lens_steer.models import final_norm, unembedding

    w_u, _ = unembedding(model)
    gain, kind = final_norm(model)
    tok = model.tokenizer

    def decode(i: int) -> str:
        return tok.decode([i])

    dirs = vector.directions.float()
    control_dirs = random_direction_control(dirs, seed)
    lens = direction_logit_lens(dirs, w_u, norm_weight=gain, norm_kind=kind, k=k, decode=decode)
    control = direction_logit_lens(control_dirs, w_u, norm_weight=gain, norm_kind=kind, k=k, decode=decode)
    rows = list(range(lens.n_layers)) if layers is None else list(layers)
    numbers = LogitLensNumbers(
        norm_kind=kind,
        k=k,
        control_seed=seed,
        top_tokens={str(layer): lens.top_tokens[layer] for layer in rows},
        bottom_tokens={str(layer): lens.bottom_tokens[layer] for layer in rows},
        control_top_tokens={str(layer): control.top_tokens[layer] for layer in rows},
        top_score_max=rounded(lens.top_scores[:, 0].max(), 3),
        control_top_score_max=rounded(control.top_scores[:, 0].max(), 3),
        top_overlap_with_control=rounded_list(token_overlap(lens, control, "top"), 2),
    )
    height = max(400, 26 * len(rows) + 180)
    figs = []
    for which, verb in (("top", "promotes"), ("bottom", "suppresses")):
        figs.append(FigureSpec(
            f"logit_lens_{which}", f"Logit lens: tokens each layer's direction {verb} (table)",
            f"Layer × rank table of the {k} tokens each layer's CoT direction {verb} most under the "
            f"unembedding ({LENS_NORM_TEXT}), beside a random direction of the same norm (seed {seed}) on a "
            "shared colour scale. Interactive (hover for ids and scores), so HTML only.",
            plot_logit_lens(lens, rows, control=control, which=which), 1900, height, png=False))
    return figs, numbers
