"""Cosine-similarity analyses of CoT directions and per-question vectors; pure tensor functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "PairwiseCosineStats",
    "SourceCosineResult",
    "cosine_by_source",
    "layer_cosine_matrix",
    "pairwise_cosine_stats",
    "split_half_stability",
]

_EPS = 1e-12


def _unit(x: Tensor) -> Tensor:
    """Normalise the last dimension to unit L2 norm (zero vectors stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def _cosine_matrix(x: Tensor) -> Tensor:
    """All-pairs cosine similarity of the rows of ``x`` ([n, d] -> [n, n])."""
    u = _unit(x.float())
    return u @ u.T


def _mean_offdiag(m: Tensor) -> tuple[float, float]:
    """Mean and (unbiased) std of the off-diagonal entries of a square matrix; NaN if none."""
    n = m.shape[0]
    if n < 2:
        return float("nan"), float("nan")
    vals = m[~torch.eye(n, dtype=torch.bool, device=m.device)]
    std = vals.std().item() if vals.numel() > 1 else float("nan")
    return vals.mean().item(), std


def layer_cosine_matrix(directions: Float[Tensor, "layer d_model"]) -> Float[Tensor, "layer layer"]:
    """Cosine similarity between the CoT directions of every pair of layers.

    Args:
        directions: One steering direction per layer.

    Returns:
        Symmetric matrix whose ``[i, j]`` entry is ``cos(directions[i], directions[j])``.
    """
    return _cosine_matrix(directions)


@dataclass(frozen=True)
class PairwiseCosineStats:
    """Agreement of per-question vectors within one layer.

    Attributes:
        layer: The layer analysed.
        mean_pairwise: Mean cosine over distinct question pairs (off-diagonal entries).
        std_pairwise: Standard deviation of those off-diagonal cosines.
        cos_with_mean: ``[n_questions]`` cosine of each per-question vector with the
            mean over questions (the layer's CoT direction).
        pairwise: ``[n_questions, n_questions]`` full cosine matrix.
    """

    layer: int
    mean_pairwise: float
    std_pairwise: float
    cos_with_mean: Float[Tensor, " question"]
    pairwise: Float[Tensor, "question question"]


def pairwise_cosine_stats(
    per_question: Float[Tensor, "question layer d_model"], layer: int
) -> PairwiseCosineStats:
    """Summarise how well per-question vectors agree at one layer.

    Args:
        per_question: Per-question vectors v(q) for every layer.
        layer: Layer index to analyse.

    Returns:
        A :class:`PairwiseCosineStats` for that layer.
    """
    x = per_question[:, layer].float()
    pairwise = _cosine_matrix(x)
    mean, std = _mean_offdiag(pairwise)
    cos_with_mean = _unit(x) @ _unit(x.mean(0))
    return PairwiseCosineStats(
        layer=layer,
        mean_pairwise=mean,
        std_pairwise=std,
        cos_with_mean=cos_with_mean,
        pairwise=pairwise,
    )


def split_half_stability(
    per_question: Float[Tensor, "question layer d_model"],
    n_splits: int = 100,
    seed: int = 0,
) -> Float[Tensor, " layer"]:
    """Split-half reliability of the mean direction, per layer.

    For each of ``n_splits`` random permutations of the questions, the first
    ``n // 2`` questions form half A and the next ``n // 2`` half B (one question
    is left out when ``n`` is odd); the score is ``cos(mean(A), mean(B))`` at each
    layer, averaged over splits. Near 1 means the direction is reproducible from
    half the data; near 0 means it is noise.

    Args:
        per_question: Per-question vectors v(q) for every layer.
        n_splits: Number of random half splits.
        seed: Seed for the CPU generator that draws the permutations.

    Returns:
        Mean split-half cosine for each layer.

    Raises:
        ValueError: If fewer than two questions are given or ``n_splits < 1``.
    """
    n = per_question.shape[0]
    if n < 2:
        raise ValueError(f"split_half_stability needs at least 2 questions, got {n}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    x = per_question.float()
    gen = torch.Generator().manual_seed(seed)
    half = n // 2
    total = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    for _ in range(n_splits):
        perm = torch.randperm(n, generator=gen).to(x.device)
        a = x[perm[:half]].mean(0)
        b = x[perm[half : 2 * half]].mean(0)
        total += (_unit(a) * _unit(b)).sum(-1)
    return total / n_splits


@dataclass(frozen=True)
class SourceCosineResult:
    """Cosine structure across question sources at one layer ("one direction or several?").

    Attributes:
        layer: The layer analysed.
        sources: Distinct source names, in first-appearance order; indexes the matrices.
        between: ``[n_sources, n_sources]`` cosine between per-source mean vectors.
        within: ``[n_sources]`` mean off-diagonal pairwise cosine of the per-question
            vectors inside each source (NaN for a source with a single question).
        counts: ``[n_sources]`` number of questions per source.
    """

    layer: int
    sources: list[str]
    between: Float[Tensor, "source source"]
    within: Float[Tensor, " source"]
    counts: Tensor


def cosine_by_source(
    per_question: Float[Tensor, "question layer d_model"],
    sources: Sequence[str],
    layer: int,
) -> SourceCosineResult:
    """Compare per-source mean vectors and within-source agreement at one layer.

    Args:
        per_question: Per-question vectors v(q) for every layer.
        sources: Source name of each question (same length as ``per_question``).
        layer: Layer index to analyse.

    Returns:
        A :class:`SourceCosineResult`.

    Raises:
        ValueError: If ``sources`` does not match the number of questions.
    """
    if len(sources) != per_question.shape[0]:
        raise ValueError(f"{len(sources)} sources for {per_question.shape[0]} questions")
    names = list(dict.fromkeys(sources))
    x = per_question[:, layer].float()
    means, within, counts = [], [], []
    for name in names:
        idx = torch.tensor([i for i, s in enumerate(sources) if s == name], device=x.device)
        xs = x[idx]
        means.append(xs.mean(0))
        within.append(_mean_offdiag(_cosine_matrix(xs))[0])
        counts.append(len(idx))
    return SourceCosineResult(
        layer=layer,
        sources=names,
        between=_cosine_matrix(torch.stack(means)),
        within=torch.tensor(within, dtype=torch.float32),
        counts=torch.tensor(counts, dtype=torch.long),
    )
