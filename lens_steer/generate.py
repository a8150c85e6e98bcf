"""Batched, KV-cached generation from token ids, with left padding, on a bridge.

Steering is whatever hooks are active (see :mod:`lens_steer.inject`); an optional
``observer`` sees every forward pass, which is how :mod:`lens_steer.collect` reads the
residual stream of the generated tokens during generation instead of in a second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_steer.fastpath import fast_forward  # fast path: HF layers while only residual hooks are active
from lens_steer.inject import new_sequence
from lens_steer.models import hf_model, stop_token_ids


@dataclass(frozen=True)
class GenerationConfig:
    """Generation settings shared by derivation, ``generate`` and evaluation.

    Attributes:
        max_new_tokens: Maximum generated tokens per prompt.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        seed: Seed of the sampler (sampled tokens depend on batch composition too).
        batch_size: Prompts per batch (at most).
        max_batch_tokens: Cap on ``rows x padded prompt length`` of a batch, so a few very
            long prompts run in smaller batches instead of padding a full one (a batch always
            holds at least one prompt).
        use_cache: Use a KV cache (``False`` re-runs the whole sequence at each step).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    max_batch_tokens: int = 8192
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class Generation:
    """One prompt's generation.

    Attributes:
        prompt_ids: The prompt tokens.
        response_ids: Generated tokens before the first stop token (the stop token excluded).
        stopped: Whether a stop token ended the response (else it hit ``max_new_tokens``).
        text: ``response_ids`` decoded, special tokens skipped.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    stopped: bool
    text: str = ""
    extra: dict = field(default_factory=dict)


class ForwardObserver(Protocol):
    """Sees each forward pass of :func:`generate` (KV-cached mode only)."""

    needs_final_pass: bool
    """Run one more pass so the last generated token of truncated rows is consumed."""

    def start_batch(self, rows: Sequence[int], prompt_mask: Tensor) -> None:
        """A batch of prompts (original indices ``rows``; ``prompt_mask`` [B, P]) starts."""

    def before_forward(self, weights: Tensor) -> None:
        """The next pass consumes positions with these weights: [B, P] prompt mask on the
        prompt pass, [B, 1] (1 = a response token, 0 = padding / stop / finished) after."""

    def end_batch(self) -> None:
        """The batch is done."""


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _next_token(logits: Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> Tensor:
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def _forward(hf, ids: Tensor, mask: Tensor, positions: Tensor, cache) -> Tensor:
    out = hf(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def _generate_batch(model, prompts, cfg, stop_ids, gen, observer, rows) -> list[Generation]:
    from transformers import DynamicCache

    hf = hf_model(model)
    forward = fast_forward(model)  # fast path (lens_steer.fastpath); falls back to hf itself
    device = next(hf.parameters()).device
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else stop_ids[0]
    ids, mask = _left_pad(prompts, pad_id, device)
    batch = ids.shape[0]
    stop = torch.tensor(stop_ids, device=device)
    new_sequence(model)
    if observer is not None:
        observer.start_batch(rows, mask)
        observer.before_forward(mask.to(torch.float32))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache() if cfg.use_cache else None
    logits = _forward(forward, ids, mask, positions, cache)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, content = [], []
    seq_ids, seq_mask = ids, mask
    last_pos = positions[:, -1]
    for step in range(cfg.max_new_tokens):
        nxt = _next_token(logits, cfg, gen)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        is_content = ~finished & ~torch.isin(nxt, stop)
        finished = finished | ~is_content
        tokens.append(nxt)
        content.append(is_content)
        last_step = step == cfg.max_new_tokens - 1
        if bool(finished.all()) or (last_step and (observer is None or not observer.needs_final_pass)):
            break
        seq_mask = torch.cat([seq_mask, torch.ones((batch, 1), dtype=seq_mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        if observer is not None:
            observer.before_forward(is_content.to(torch.float32)[:, None])
        if cfg.use_cache:
            logits = _forward(forward, nxt[:, None], seq_mask, last_pos[:, None], cache)
        else:
            seq_ids = torch.cat([seq_ids, nxt[:, None]], dim=1)
            logits = _forward(forward, seq_ids, seq_mask, (seq_mask.cumsum(-1) - 1).clamp(min=0), None)
        if last_step:
            break
    if observer is not None:
        observer.end_batch()
    tok = torch.stack(tokens, dim=1).cpu() if tokens else torch.zeros((batch, 0), dtype=torch.long)
    keep = torch.stack(content, dim=1).cpu() if content else torch.zeros((batch, 0), dtype=torch.bool)
    results = []
    for i, prompt in enumerate(prompts):
        response = tok[i][keep[i]].tolist()
        stopped = bool((~keep[i]).any())
        results.append(Generation(list(prompt), response, stopped))
    return results


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


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig = GenerationConfig(),
    *,
    observer: ForwardObserver | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> list[Generation]:
    """Generate a response for each prompt (token ids), in batches sorted by length.

    Args:
        model: A ``TransformerBridge``; active hooks (steering) apply to every pass.
        prompts: Token ids per prompt (e.g. from :func:`lens_steer.prompts.encode_prompt`).
        config: Generation settings.
        observer: Optional :class:`ForwardObserver` (requires ``config.use_cache``).
        progress: Show a progress bar.
        desc: Progress bar label.

    Returns:
        One :class:`Generation` per prompt, in input order, with ``text`` decoded.
    """
    if observer is not None and not config.use_cache:
        raise ValueError("an observer needs use_cache=True (each pass must hold only new tokens)")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    stop_ids = stop_token_ids(model)
    if not stop_ids:
        raise ValueError("the tokenizer defines no EOS token; cannot tell where a response ends")
    gen = torch.Generator().manual_seed(config.seed) if config.do_sample else None
    batches = plan_batches([len(p) for p in prompts], config.batch_size, config.max_batch_tokens)
    results: list[Generation | None] = [None] * len(prompts)
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt") as bar:
        for rows in batches:
            batch = _generate_batch(model, [prompts[i] for i in rows], config, stop_ids, gen, observer, rows)
            for i, g in zip(rows, batch):
                results[i] = g
            bar.update(len(rows))
    tok = model.tokenizer
    for g in results:
        g.text = tok.decode(g.response_ids, skip_special_tokens=True)
    return results
