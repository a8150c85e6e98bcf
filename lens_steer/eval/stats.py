"""Accuracy statistics: a bootstrap confidence interval and the exact McNemar test; pure."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["accuracy_ci", "mcnemar_exact"]


def accuracy_ci(correct: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy with a 95% percentile-bootstrap interval.

    Resampling ``n`` 0/1 outcomes with replacement gives a count of successes that is
    exactly Binomial(n, accuracy), so the bootstrap means are drawn from that binomial
    (same distribution as index resampling, O(n_boot) memory).

    Args:
        correct: One bool per item.
        n_boot: Bootstrap replicates.
        seed: Seed of the replicates.

    Returns:
        ``(accuracy, lower, upper)``.

    Raises:
        ValueError: If ``correct`` is empty or ``n_boot < 1``.
    """
    arr = np.asarray(correct, dtype=bool)
    if arr.size == 0:
        raise ValueError("accuracy_ci needs at least one item")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = arr.size
    acc = float(arr.mean())
    means = np.random.default_rng(seed).binomial(n, acc, size=n_boot) / n
    lo, hi = np.percentile(means, [2.5, 97.5])
    return acc, float(lo), float(hi)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test of paired correctness.

    Args:
        a: Correctness under condition A, one bool per item.
        b: Correctness under condition B, same items in the same order.

    Returns:
        The p-value: twice the binomial(n_discordant, 1/2) tail at the smaller discordant
        count, capped at 1; 1.0 when there are no discordant pairs.

    Raises:
        ValueError: If the sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired sequences differ in length: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)
