"""Mean residual stream (``hook_resid_post``, all layers) over chosen positions of generated text.

The default ``method="fused"`` reads the residual stream while generating: each KV-cached
decode step computes the residual of the token it consumes, so the response tokens' states
come for free (one extra step only for responses cut at ``max_new_tokens``). ``"two_pass"``
generates first and then runs prompt + response through the model again, as the paper
describes; both give the same means up to float rounding. Memory is a running sum per
sequence and layer, never a whole activation cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.config import GenerationConfig
from lens_steer.engines.api import as_engine
from lens_steer.engines.base import POSITIONS, Generation, Positions, ResidualSums
from lens_steer.engines.registry import require

Method = Literal["fused", "two_pass"]
METHODS: tuple[str, ...] = ("fused", "two_pass")

__all__ = ["METHODS", "POSITIONS", "Method", "Positions", "ResidualMeans", "collect_residual_means", "concat_means"]


@dataclass
class ResidualMeans:
    """Per-prompt mean residual streams.

    Attributes:
        means: [n_prompts, n_layers, d_model] mean of ``hook_resid_post`` over the counted positions.
        counts: [n_prompts] number of positions averaged (0 → the row of ``means`` is zero).
        norms: [n_prompts, n_layers] mean L2 norm of the residual over the same positions.
        generations: The generated responses.
    """

    means: Float[Tensor, "prompt layer d_model"]
    counts: Tensor
    norms: Float[Tensor, "prompt layer"]
    generations: list[Generation]


def collect_residual_means(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig = GenerationConfig(),
    *,
    positions: Positions = "generated",
    method: Method = "fused",
    progress: bool = True,
) -> ResidualMeans:
    """Generate a response per prompt and average ``hook_resid_post`` over ``positions``.

    Args:
        model: A ``TransformerBridge`` or an engine.
        prompts: Prompt token ids.
        config: Generation settings (``use_cache`` must be on for ``"fused"``).
        positions: ``"generated"`` (response tokens, stop token excluded), ``"prompt"`` or ``"all"``.
        method: ``"fused"`` (read during generation) or ``"two_pass"`` (re-run prompt + response).
        progress: Show progress bars.

    Returns:
        :class:`ResidualMeans` in prompt order.
    """
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; expected one of {POSITIONS}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    engine = as_engine(model)
    info = engine.info
    sums = ResidualSums(len(prompts), info.n_layers, info.d_model, positions)
    if method == "fused":
        if not config.use_cache:
            raise ValueError("method='fused' needs use_cache=True; use method='two_pass' without a cache")
        require(engine, "residual_capture", "deriving a vector")
        generations = engine.generate(prompts, config, residuals=sums, progress=progress, desc="deriving")
    else:
        require(engine, "reread_residuals", "method='two_pass'")
        generations = engine.generate(prompts, config, progress=progress, desc="deriving")
        sequences, weights = [], []
        for p, g in zip(prompts, generations):
            sequences.append(list(p) + g.response_ids)
            weights.append([float(sums.counts_prompt)] * len(p) + [float(sums.counts_generated)] * len(g.response_ids))
        engine.read_residuals(sequences, weights, sums, config, progress=progress)
    means, counts, norms = sums.means()
    return ResidualMeans(means=means, counts=counts, norms=norms, generations=generations)


def concat_means(parts: Sequence[ResidualMeans]) -> ResidualMeans:
    """One :class:`ResidualMeans` from consecutive chunks, in order."""
    return ResidualMeans(means=torch.cat([p.means for p in parts]), counts=torch.cat([p.counts for p in parts]),
                         norms=torch.cat([p.norms for p in parts]),
                         generations=[g for p in parts for g in p.generations])
