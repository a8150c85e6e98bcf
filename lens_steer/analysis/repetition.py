"""Whether a response is stuck in a loop: the distinct token-trigram ratio; pure."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["REPETITIVE_MAX_DISTINCT", "REPETITIVE_MIN_TOKENS", "distinct_ngram_ratio", "is_repetitive"]

REPETITIVE_MIN_TOKENS = 20
"""Responses shorter than this are never called repetitive."""
REPETITIVE_MAX_DISTINCT = 0.2
"""A response whose distinct token-trigram ratio is below this is repetitive (a loop such as
``step step step ...``); fluent answers, even list-like ones, score well above it."""


def distinct_ngram_ratio(tokens: Sequence, n: int = 3) -> float:
    """Distinct n-grams / all n-grams of a token sequence (1.0 when it has no n-gram).

    Args:
        tokens: Token ids (or any hashable items).
        n: n-gram length.

    Returns:
        A ratio in (0, 1]; near 0 for a response stuck in a loop.
    """
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def is_repetitive(tokens: Sequence, min_tokens: int = REPETITIVE_MIN_TOKENS,
                  max_distinct: float = REPETITIVE_MAX_DISTINCT) -> bool:
    """Whether a response is a degenerate loop: at least ``min_tokens`` tokens and a distinct
    token-trigram ratio below ``max_distinct``.

    :func:`lens_steer.eval.scoring.is_cot_style` calls any long answer-less text CoT style, loops
    included, so the ablation reports this alongside it.
    """
    return len(tokens) >= min_tokens and distinct_ngram_ratio(tokens, 3) < max_distinct
