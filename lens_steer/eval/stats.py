"""Accuracy statistics: a bootstrap confidence interval, the exact McNemar test, and the share of the CoT
prompt's gain a steered condition recovers (paired bootstrap); pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RecoveredGain", "accuracy_ci", "mcnemar_exact", "recovered_gain"]


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


@dataclass(frozen=True)
class RecoveredGain:
    """(steered − direct) / (CoT − direct) on paired items, with a 95 % paired-bootstrap interval.

    Attributes:
        fraction: The point estimate (0: steering buys nothing of the CoT prompt's gain; 1: all of it).
        low / high: Percentile interval over the replicates whose CoT − direct gain keeps the observed sign
            (a replicate without a gain has no fraction).
        n: Paired items. n_boot: Replicates drawn. dropped: Replicates left out for that reason.
    """

    fraction: float
    low: float
    high: float
    n: int
    n_boot: int
    dropped: int


def recovered_gain(direct: Sequence[bool], cot: Sequence[bool], steered: Sequence[bool], n_boot: int = 2000,
                   seed: int = 0) -> RecoveredGain | None:
    """How much of the CoT prompt's accuracy gain a steered condition recovers (Zhang & Viteri's question).

    Items are resampled jointly (the three conditions answered the same items), so the interval carries the
    pairing. The ratio is undefined without a gain; replicates whose gain is zero or of the other sign than
    the observed one are left out of the interval and counted in ``dropped``.

    Args:
        direct / cot / steered: Correctness per item under each condition, the same items in the same order.
        n_boot: Bootstrap replicates. seed: Their seed.

    Returns:
        The :class:`RecoveredGain`, or None when CoT − direct is 0 on these items (nothing to recover).

    Raises:
        ValueError: the sequences differ in length, are empty, or ``n_boot < 1``.
    """
    d, c, s = (np.asarray(x, dtype=float) for x in (direct, cot, steered))
    if not (d.size == c.size == s.size):
        raise ValueError(f"paired sequences differ in length: {d.size}, {c.size}, {s.size}")
    if d.size == 0:
        raise ValueError("recovered_gain needs at least one item")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    gain = c.sum() - d.sum()
    if gain == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    gains = c[idx].sum(axis=1) - d[idx].sum(axis=1)
    keep = np.sign(gains) == np.sign(gain)
    ratios = (s[idx].sum(axis=1) - d[idx].sum(axis=1))[keep] / gains[keep]
    lo, hi = np.percentile(ratios, [2.5, 97.5]) if ratios.size else (math.nan, math.nan)
    return RecoveredGain(float((s.sum() - d.sum()) / gain), float(lo), float(hi), int(d.size), n_boot,
                         int(n_boot - keep.sum()))
