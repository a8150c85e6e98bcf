"""Token-set logit lens: how a chosen set of tokens (step markers, answer markers) scores and ranks
under each layer's direction, against a band from random directions of the same norm; pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens_steer.analysis.logit_lens import NormKind, lens_scores, random_directions

__all__ = [
    "DEFAULT_TOKEN_GROUPS",
    "DroppedToken",
    "LensMetric",
    "TokenSet",
    "TokenSetLens",
    "resolve_token_set",
    "token_set_lens",
]

LensMetric = Literal["score", "rank"]

DEFAULT_TOKEN_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "step markers": (" step", " Step", "Step", " steps", " First", "First", " Let", "Let", " Then", " Next",
                     " Second", " Finally"),
    "step numerals": (" 1", " 2", " 3", "1", "2", "3"),
    "answer markers": (" The", "The", " answer", " Answer", "Answer", " Therefore", " final"),
})
"""Token groups of the main logit-lens figure: words that open reasoning steps, the numerals that
count them (their own group: a direction can promote one and not the other), and words that open a
direct answer. Strings that are not one token of a vocabulary are dropped there."""


@dataclass(frozen=True)
class DroppedToken:
    """A token string left out of a :class:`TokenSet`, and why."""

    group: str
    text: str
    reason: str


@dataclass(frozen=True)
class TokenSet:
    """Token groups resolved against one vocabulary: every kept string is exactly one token.

    Attributes:
        groups: Names of the groups that kept at least one token, in the order given.
        texts: Kept token strings.
        ids: Their token ids.
        group_of: Index into ``groups`` of each kept token.
        dropped: Strings left out, with the reason (not one token, duplicate, out of range); a
            group that kept nothing is absent from ``groups`` and all its strings are here.
    """

    groups: tuple[str, ...]
    texts: tuple[str, ...]
    ids: tuple[int, ...]
    group_of: tuple[int, ...]
    dropped: tuple[DroppedToken, ...] = ()

    def members(self, group: str) -> list[str]:
        """Kept token strings of one group."""
        g = self.groups.index(group)
        return [t for t, gi in zip(self.texts, self.group_of, strict=True) if gi == g]


def resolve_token_set(
    groups: Mapping[str, Sequence[str]], encode: Callable[[str], Sequence[int]], d_vocab: int
) -> TokenSet:
    """Keep the strings that encode to exactly one token id below ``d_vocab``.

    Args:
        groups: ``{group name: token strings}`` (a leading space is part of the string).
        encode: Text -> token ids, without special tokens.
        d_vocab: Number of unembedding columns (ids at or above it cannot be scored).

    Returns:
        A :class:`TokenSet`; a string repeating an id already kept (in any group) is dropped.

    Raises:
        ValueError: If no string of any group is a single token.
    """
    kept: dict[int, tuple[str, str]] = {}
    dropped: list[DroppedToken] = []
    for group, texts in groups.items():
        for text in texts:
            ids = list(encode(text))
            if len(ids) != 1:
                dropped.append(DroppedToken(group, text, f"not one token: encodes to {len(ids)} ids {ids}"))
            elif ids[0] >= d_vocab:
                dropped.append(DroppedToken(group, text, f"id {ids[0]} is outside the unembedding ({d_vocab})"))
            elif ids[0] in kept:
                dropped.append(DroppedToken(group, text, f"same id {ids[0]} as {kept[ids[0]][1]!r}"))
            else:
                kept[ids[0]] = (group, text)
    names = tuple(g for g in groups if any(grp == g for grp, _ in kept.values()))
    if not names:
        raise ValueError(f"none of the tokens of {', '.join(groups) or 'the (empty) groups'} is a single "
                         "token of this vocabulary")
    return TokenSet(groups=names, texts=tuple(text for _, text in kept.values()), ids=tuple(kept),
                    group_of=tuple(names.index(grp) for grp, _ in kept.values()), dropped=tuple(dropped))


@dataclass(frozen=True)
class TokenSetLens:
    """Scores and ranks of a token set under each layer's direction and under random directions.

    A score is the lens logit of :func:`~lens_steer.analysis.logit_lens.lens_scores` (the
    final norm's gain, then ``W_U``; no 1/RMS, no bias), so it grows with ‖v‖: random
    directions of the same norm per layer give the scale to read it against. A rank is 1 for
    the vocabulary's highest score (1 + the number of tokens scoring strictly higher); a group's
    rank is the geometric mean of its tokens' ranks, so one token near the bottom of the
    vocabulary does not hide the others near the top.

    Attributes:
        token_set: The resolved tokens.
        scores: ``[layer, token]`` score of each kept token.
        ranks: ``[layer, token]`` its rank among all ``d_vocab`` tokens.
        group_scores: ``[layer, group]`` mean score over each group's tokens.
        group_ranks: ``[layer, group]`` geometric mean rank over each group's tokens.
        random_group_scores: ``[draw, layer, group]`` the group mean score under each random direction.
        random_group_ranks: ``[draw, layer, group]`` the group rank under each random direction.
        quantiles: Lower and upper quantile of the random band, e.g. ``(0.05, 0.95)``.
        norm_kind: How the final norm was applied.
        d_vocab: Vocabulary size (the worst rank).
    """

    token_set: TokenSet
    scores: Float[Tensor, "layer token"]
    ranks: Int[Tensor, "layer token"]
    group_scores: Float[Tensor, "layer group"]
    group_ranks: Float[Tensor, "layer group"]
    random_group_scores: Float[Tensor, "draw layer group"]
    random_group_ranks: Float[Tensor, "draw layer group"]
    quantiles: tuple[float, float]
    norm_kind: str
    d_vocab: int

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return self.scores.shape[0]

    @property
    def n_random(self) -> int:
        """Random directions per layer."""
        return self.random_group_scores.shape[0]

    def group_values(self, metric: LensMetric) -> Float[Tensor, "layer group"]:
        """``group_scores`` or ``group_ranks``."""
        return self.group_scores if _check_metric(metric) == "score" else self.group_ranks

    def band(self, metric: LensMetric) -> tuple[Tensor, Tensor, Tensor]:
        """``(low, mean, high)``, each ``[layer, group]``: the random directions' lower quantile,
        mean and upper quantile of the group's ``metric``."""
        draws = self.random_group_scores if _check_metric(metric) == "score" else self.random_group_ranks
        q = torch.tensor(self.quantiles, dtype=draws.dtype)
        low, high = torch.quantile(draws, q, dim=0)
        return low, draws.mean(dim=0), high


def _check_metric(metric: str) -> str:
    if metric not in ("score", "rank"):
        raise ValueError(f"metric must be 'score' or 'rank', got {metric!r}")
    return metric


def _token_stats(scores: Tensor, ids: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(token scores, token ranks, group mean scores, group geometric-mean ranks)`` of ``[..., d_vocab]`` scores."""
    picked = scores[..., ids].contiguous()
    at_or_below = torch.searchsorted(scores.sort(dim=-1).values, picked, right=True)  # count of scores <= picked
    ranks = scores.shape[-1] - at_or_below + 1
    return picked, ranks, picked @ groups, (ranks.double().log() @ groups.double()).exp().float()


def token_set_lens(
    directions: Float[Tensor, "layer d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    token_set: TokenSet,
    *,
    generator: torch.Generator,
    norm_weight: Float[Tensor, " d_model"] | None = None,
    norm_kind: NormKind = "rms",
    n_random: int = 100,
    quantiles: tuple[float, float] = (0.05, 0.95),
) -> TokenSetLens:
    """Score and rank a token set under every layer's direction and under ``n_random`` random
    directions of the same norm per layer (drawn from ``generator``).

    Args:
        directions: One direction per layer.
        W_U: Unembedding matrix.
        token_set: From :func:`resolve_token_set` on this model's tokenizer.
        generator: Seeded CPU generator of the random directions.
        norm_weight: Final norm's gain γ, or None for ones.
        norm_kind: ``"rms"``, ``"layer"`` or ``"none"`` (as in the top-k lens).
        n_random: Random directions per layer.
        quantiles: Lower and upper quantile of the random band, in [0, 1].

    Returns:
        A :class:`TokenSetLens`.

    Raises:
        ValueError: On a token id outside ``W_U``, ``n_random`` < 1, bad quantiles or an
            unknown ``norm_kind``.
    """
    d_vocab = W_U.shape[1]
    if max(token_set.ids) >= d_vocab:
        raise ValueError(f"token id {max(token_set.ids)} is outside the unembedding ({d_vocab} columns)")
    if not 0.0 <= quantiles[0] < quantiles[1] <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    ids = torch.tensor(token_set.ids, device=W_U.device)
    sizes = torch.bincount(torch.tensor(token_set.group_of), minlength=len(token_set.groups)).float()
    groups = torch.nn.functional.one_hot(torch.tensor(token_set.group_of), len(token_set.groups)).float() / sizes
    groups = groups.to(W_U.device)
    scores, ranks, group_scores, group_ranks = _token_stats(lens_scores(directions, W_U, norm_weight, norm_kind),
                                                            ids, groups)
    draws = random_directions(directions, n_random, generator)
    rand_scores, rand_ranks = [], []
    for layer in range(directions.shape[0]):
        _, _, s, r = _token_stats(lens_scores(draws[:, layer], W_U, norm_weight, norm_kind), ids, groups)
        rand_scores.append(s.cpu())
        rand_ranks.append(r.cpu())
    return TokenSetLens(
        token_set=token_set,
        scores=scores.cpu(),
        ranks=ranks.cpu(),
        group_scores=group_scores.cpu(),
        group_ranks=group_ranks.cpu(),
        random_group_scores=torch.stack(rand_scores, dim=1),
        random_group_ranks=torch.stack(rand_ranks, dim=1),
        quantiles=(float(quantiles[0]), float(quantiles[1])),
        norm_kind=norm_kind,
        d_vocab=d_vocab,
    )
