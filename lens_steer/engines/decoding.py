"""Decoding pieces of an engine that runs its own generation loop: left padding, batches planned under a
token budget, the next-token choice, and the check that logits stayed finite."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lens_steer.config import GenerationConfig

__all__ = ["check_finite", "left_pad", "next_token", "plan_batches"]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """``(ids, attention mask)`` of sequences left-padded to the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group prompt indices into batches, longest first, under both caps.

    Args:
        lengths: Prompt lengths.
        batch_size: Most prompts per batch.
        max_batch_tokens: Most ``rows x longest prompt`` per batch (one prompt always fits).

    Returns:
        Batches of indices; each batch is sorted by decreasing length.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            cur = batches[-1]
            width = lengths[cur[0]]  # the longest prompt of the batch comes first
            if len(cur) < batch_size and width * (len(cur) + 1) <= max_batch_tokens:
                cur.append(i)
                continue
        batches.append([i])
    return batches


def check_finite(logits: Tensor, finished: Tensor, step: int) -> None:
    """Refuse NaN or infinite logits of a row still generating: they would decode to empty or garbage text
    (a steering finite in itself can still blow up the stream it is added to)."""
    bad = ~torch.isfinite(logits).all(dim=-1) & ~finished
    if bool(bad.any()):
        raise ValueError(f"the model's logits are NaN or infinite at generation step {step} for "
                         f"{int(bad.sum())} prompt(s): a steering this large (or broken weights) breaks the "
                         "model; use a smaller coefficient")


def next_token(logits: Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> Tensor:
    """The next token of each row: the argmax (greedy) or a draw from the (top-p) softmax at the temperature."""
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
