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
from tqdm.auto import tqdm

from lens_steer.fastpath import fast_forward  # fast path: HF layers while only residual hooks are active
from lens_steer.generate import Generation, GenerationConfig, _left_pad, generate, plan_batches
from lens_steer.hooks import attach
from lens_steer.models import d_model, hf_model, n_layers, resid_post_name

Positions = Literal["generated", "prompt", "all"]
POSITIONS: tuple[str, ...] = ("generated", "prompt", "all")
Method = Literal["fused", "two_pass"]
METHODS: tuple[str, ...] = ("fused", "two_pass")


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


class _Accumulator:
    """Running masked sums of ``hook_resid_post`` at every layer, one row per prompt."""

    needs_final_pass = True

    def __init__(self, model, n_prompts: int, positions: Positions) -> None:
        self.model = model
        self.positions = positions
        self.n_layers = n_layers(model)
        self.sums = torch.zeros(n_prompts, self.n_layers, d_model(model), dtype=torch.float32)
        self.norm_sums = torch.zeros(n_prompts, self.n_layers, dtype=torch.float32)
        self.counts = torch.zeros(n_prompts, dtype=torch.float64)
        self._rows: list[int] = []
        self._weights: Tensor | None = None
        self._prompt_pass = False
        self._batch_sums: Tensor | None = None
        self._batch_norms: Tensor | None = None

    def hooks(self):
        return [(resid_post_name(layer), self._make_hook(layer)) for layer in range(self.n_layers)]

    def _make_hook(self, layer: int):
        def hook(x: Tensor, hook) -> None:
            w = self._weights
            if w is None or self._batch_sums is None:
                return None
            xf = x.float()
            self._batch_sums[:, layer] += torch.einsum("bpd,bp->bd", xf, w)
            self._batch_norms[:, layer] += (xf.norm(dim=-1) * w).sum(dim=1)
            return None

        return hook

    def start_batch(self, rows, prompt_mask: Tensor) -> None:
        self._rows = list(rows)
        device = prompt_mask.device
        self._batch_sums = torch.zeros(len(rows), self.n_layers, self.sums.shape[-1], device=device)
        self._batch_norms = torch.zeros(len(rows), self.n_layers, device=device)
        self._batch_counts = torch.zeros(len(rows), dtype=torch.float64, device=device)
        self._prompt_pass = True

    def before_forward(self, weights: Tensor) -> None:
        counted = self.positions in ("prompt", "all") if self._prompt_pass else self.positions in ("generated", "all")
        self._prompt_pass = False
        self._weights = weights if counted else None
        if counted:
            self._batch_counts += weights.sum(dim=1).double()

    def end_batch(self) -> None:
        idx = torch.tensor(self._rows, dtype=torch.long)
        self.sums[idx] += self._batch_sums.cpu()
        self.norm_sums[idx] += self._batch_norms.cpu()
        self.counts[idx] += self._batch_counts.cpu()
        self._weights = self._batch_sums = self._batch_norms = None

    def result(self, generations: list[Generation]) -> ResidualMeans:
        denom = self.counts.clamp(min=1).to(torch.float32)
        return ResidualMeans(
            means=self.sums / denom[:, None, None],
            counts=self.counts.to(torch.long),
            norms=self.norm_sums / denom[:, None],
            generations=generations,
        )


def _second_pass(model, prompts, generations, acc: _Accumulator, config: GenerationConfig, progress: bool) -> None:
    hf = hf_model(model)
    device = next(hf.parameters()).device
    pad_id = model.tokenizer.pad_token_id or 0
    lengths = [len(p) + len(g.response_ids) for p, g in zip(prompts, generations)]
    batches = plan_batches(lengths, config.batch_size, config.max_batch_tokens)
    with torch.inference_mode(), attach(model, acc.hooks()):
        forward = fast_forward(model)  # fast path (lens_steer.fastpath); falls back to hf itself
        for rows in tqdm(batches, desc="re-reading", disable=not progress):
            seqs = [list(prompts[i]) + generations[i].response_ids for i in rows]
            ids, mask = _left_pad(seqs, pad_id, device)
            width = ids.shape[1]
            weights = torch.zeros(len(rows), width, device=device)
            for j, i in enumerate(rows):
                n_p, n_r = len(prompts[i]), len(generations[i].response_ids)
                lo = width - n_p - n_r
                if acc.positions in ("prompt", "all"):
                    weights[j, lo:lo + n_p] = 1
                if acc.positions in ("generated", "all"):
                    weights[j, lo + n_p:] = 1
            acc.start_batch(rows, mask)
            acc._prompt_pass = False
            acc._weights = weights
            acc._batch_counts += weights.sum(dim=1).double()
            forward(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=False, logits_to_keep=1)
            acc.end_batch()


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
        model: A ``TransformerBridge``.
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
    acc = _Accumulator(model, len(prompts), positions)
    if method == "fused":
        if not config.use_cache:
            raise ValueError("method='fused' needs use_cache=True; use method='two_pass' without a cache")
        with attach(model, acc.hooks()):
            generations = generate(model, prompts, config, observer=acc, progress=progress, desc="deriving")
    else:
        generations = generate(model, prompts, config, progress=progress, desc="deriving")
        _second_pass(model, prompts, generations, acc, config, progress)
    return acc.result(generations)
