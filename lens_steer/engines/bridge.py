"""The TransformerBridge engine: batched, left-padded, KV-cached generation from token ids, steering
hooks installed from :class:`~lens_steer.engines.base.Steering` specs, residual sums read during
generation, on the fast path where it applies. The engine owns its state (fast-path settings,
active single-mode steerers); nothing is hung on the bridge."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Generation, ResidualSums, Steering, SteeringPlan, normalise_steering
from lens_steer.engines.fastpath import FastPath
from lens_steer.engines.hooks import attach
from lens_steer.engines.steering import SingleSteerer, steering_hooks
from lens_steer.models import ModelInfo, hf_model, model_info, n_layers, resid_post_name, stop_token_ids

__all__ = ["BridgeEngine", "engine_for", "left_pad", "plan_batches"]


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
    out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
             use_cache=cache is not None, logits_to_keep=1)
    return out.logits[:, -1]


class _BatchSums:
    """Hooks at every layer adding the weighted residual of the positions a pass consumes to a batch's sums."""

    def __init__(self, model, sink: ResidualSums) -> None:
        self.sink = sink
        self.n_layers = n_layers(model)
        self.weights: Tensor | None = None
        self.sums = self.norms = self.counts = None
        self.rows: list[int] = []

    def hooks(self):
        return [(resid_post_name(layer), self._hook(layer)) for layer in range(self.n_layers)]

    def _hook(self, layer: int):
        def hook(x: Tensor, hook) -> None:
            w = self.weights
            if w is None or self.sums is None:
                return None
            xf = x.float()
            self.sums[:, layer] += torch.einsum("bpd,bp->bd", xf, w)
            self.norms[:, layer] += (xf.norm(dim=-1) * w).sum(dim=1)
            return None

        return hook

    def start(self, rows: Sequence[int], device) -> None:
        self.rows = list(rows)
        self.sums = torch.zeros(len(rows), self.n_layers, self.sink.sums.shape[-1], device=device)
        self.norms = torch.zeros(len(rows), self.n_layers, device=device)
        self.counts = torch.zeros(len(rows), dtype=torch.float64, device=device)

    def count(self, weights: Tensor | None) -> None:
        """The next pass consumes positions with these weights (None: count nothing)."""
        self.weights = weights
        if weights is not None:
            self.counts += weights.sum(dim=1).double()

    def end(self) -> None:
        self.sink.add(self.rows, self.sums, self.norms, self.counts)
        self.weights = self.sums = self.norms = self.counts = None


class BridgeEngine:
    """Generation on a TransformerLens ``TransformerBridge`` (the default engine).

    Args:
        model: The bridge (see :func:`lens_steer.models.load_model`). One engine per bridge:
            use :func:`engine_for` to get the bridge's engine, so that :func:`~lens_steer.engines.api.steer`
            contexts and the engine's own steering share one registry.
    """

    name = "bridge"

    def __init__(self, model) -> None:
        self.model = model
        self.fast_path = FastPath(model)
        self.single_steerers: list[SingleSteerer] = []

    # ------------------------------------------------------------ identity
    @property
    def info(self) -> ModelInfo:
        """The model's identity (the fingerprint is read afresh, so it never goes stale)."""
        return model_info(self.model)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def dtype_name(self) -> str:
        return str(next(hf_model(self.model).parameters()).dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        return str(next(hf_model(self.model).parameters()).device)

    def attention_kernel(self) -> str:
        """See :meth:`lens_steer.engines.fastpath.FastPath.attention_kernel`."""
        return self.fast_path.attention_kernel()

    # ------------------------------------------------------------ steering
    @contextmanager
    def steering(self, plan: Steering | SteeringPlan | Sequence[Steering]) -> Iterator[list[Tensor]]:
        """Install the steering hooks of ``plan`` for the length of a ``with`` block (removed in ``finally``)."""
        specs = (plan,) if isinstance(plan, Steering) else tuple(plan)
        with steering_hooks(self.model, specs, self.info, self.single_steerers) as deltas:
            yield deltas

    def new_sequence(self) -> None:
        """Tell active single-mode steerers that the next forward pass is a new prompt."""
        for steerer in self.single_steerers:
            steerer.new_sequence()

    # ------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig = GenerationConfig(),
        *,
        steering=None,
        residuals: ResidualSums | None = None,
        progress: bool = True,
        desc: str = "generating",
    ) -> list[Generation]:
        """Generate a response for each prompt (token ids), in batches sorted by length.

        Args:
            prompts: Token ids per prompt (e.g. from :func:`lens_steer.prompts.encode_prompt`).
            config: Generation settings.
            steering: ``None``, a :class:`Steering` / tuple of them for every prompt, or one entry
                per prompt (see :func:`~lens_steer.engines.base.normalise_steering`); prompts that
                steer alike run together. Hooks already active on the bridge apply too.
            residuals: Filled with the residual sums at every layer (requires ``config.use_cache``).
            progress: Show a progress bar.
            desc: Progress bar label.

        Returns:
            One :class:`Generation` per prompt, in input order, with ``text`` decoded.
        """
        if residuals is not None and not config.use_cache:
            raise ValueError("residual sums need use_cache=True (each pass must hold only new tokens)")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        stop_ids = stop_token_ids(self.model)
        if not stop_ids:
            raise ValueError("the tokenizer defines no EOS token; cannot tell where a response ends")
        plans = normalise_steering(steering, len(prompts))
        groups = _groups(plans)
        gen = torch.Generator().manual_seed(config.seed) if config.do_sample else None
        results: list[Generation | None] = [None] * len(prompts)
        with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt") as bar:
            for members in groups.values():
                with ExitStack() as stack:
                    if plans[members[0]]:
                        stack.enter_context(self.steering(plans[members[0]]))
                    sums = None
                    if residuals is not None:
                        sums = _BatchSums(self.model, residuals)
                        stack.enter_context(attach(self.model, sums.hooks()))
                    lengths = [len(prompts[i]) for i in members]
                    for batch in plan_batches(lengths, config.batch_size, config.max_batch_tokens):
                        rows = [members[j] for j in batch]
                        out = self._generate_batch([prompts[i] for i in rows], config, stop_ids, gen, sums, rows)
                        for i, g in zip(rows, out):
                            results[i] = g
                        bar.update(len(rows))
        tok = self.model.tokenizer
        for g in results:
            g.text = tok.decode(g.response_ids, skip_special_tokens=True)
        return results

    def _generate_batch(self, prompts, cfg, stop_ids, gen, sums: _BatchSums | None, rows) -> list[Generation]:
        from transformers import DynamicCache

        model = self.model
        forward = self.fast_path.forward()  # HF layers while only residual hooks are active; else the bridge
        device = next(hf_model(model).parameters()).device
        pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else stop_ids[0]
        ids, mask = left_pad(prompts, pad_id, device)
        batch = ids.shape[0]
        stop = torch.tensor(stop_ids, device=device)
        self.new_sequence()
        if sums is not None:
            sums.start(rows, device)
            sums.count(mask.to(torch.float32) if sums.sink.counts_prompt else None)
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
            # With residual sums, one more pass consumes the last token of rows cut at max_new_tokens.
            if bool(finished.all()) or (last_step and sums is None):
                break
            seq_mask = torch.cat([seq_mask, torch.ones((batch, 1), dtype=seq_mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            if sums is not None:
                sums.count(is_content.to(torch.float32)[:, None] if sums.sink.counts_generated else None)
            if cfg.use_cache:
                logits = _forward(forward, nxt[:, None], seq_mask, last_pos[:, None], cache)
            else:
                seq_ids = torch.cat([seq_ids, nxt[:, None]], dim=1)
                logits = _forward(forward, seq_ids, seq_mask, (seq_mask.cumsum(-1) - 1).clamp(min=0), None)
            if last_step:
                break
        if sums is not None:
            sums.end()
        tok = torch.stack(tokens, dim=1).cpu() if tokens else torch.zeros((batch, 0), dtype=torch.long)
        keep = torch.stack(content, dim=1).cpu() if content else torch.zeros((batch, 0), dtype=torch.bool)
        return [Generation(list(p), tok[i][keep[i]].tolist(), bool((~keep[i]).any())) for i, p in enumerate(prompts)]

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], *, steering=None, top_k: int = 20,
        config: GenerationConfig = GenerationConfig(),
    ) -> list[dict[int, float]]:
        """The ``top_k`` log-probabilities of the first response token of each prompt (one forward pass
        over the prompt, steered as ``generate`` would steer it)."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        plans = normalise_steering(steering, len(prompts))
        pad_id = self.model.tokenizer.pad_token_id or 0
        out: list[dict[int, float] | None] = [None] * len(prompts)
        with torch.inference_mode():
            for members in _groups(plans).values():
                with ExitStack() as stack:
                    if plans[members[0]]:
                        stack.enter_context(self.steering(plans[members[0]]))
                    forward = self.fast_path.forward()
                    device = next(hf_model(self.model).parameters()).device
                    for batch in plan_batches([len(prompts[i]) for i in members], config.batch_size,
                                              config.max_batch_tokens):
                        rows = [members[j] for j in batch]
                        self.new_sequence()
                        ids, mask = left_pad([prompts[i] for i in rows], pad_id, device)
                        logits = _forward(forward, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), None)
                        top = logits.float().log_softmax(-1).topk(top_k, dim=-1)
                        for j, i in enumerate(rows):
                            out[i] = dict(zip(top.indices[j].tolist(), top.values[j].tolist()))
        return out

    # ------------------------------------------------------------ re-reading
    def read_residuals(
        self, sequences: Sequence[Sequence[int]], weights: Sequence[Sequence[float]], residuals: ResidualSums,
        config: GenerationConfig = GenerationConfig(), *, progress: bool = True,
    ) -> None:
        """One forward pass over whole sequences (prompt + response), adding the residual at the positions
        with weight 1 to ``residuals`` (the paper's literal second pass; ``method="two_pass"``)."""
        model = self.model
        device = next(hf_model(model).parameters()).device
        pad_id = model.tokenizer.pad_token_id or 0
        batches = plan_batches([len(s) for s in sequences], config.batch_size, config.max_batch_tokens)
        sums = _BatchSums(model, residuals)
        with torch.inference_mode(), attach(model, sums.hooks()):
            forward = self.fast_path.forward()
            for rows in tqdm(batches, desc="re-reading", disable=not progress):
                ids, mask = left_pad([sequences[i] for i in rows], pad_id, device)
                width = ids.shape[1]
                w = torch.zeros(len(rows), width, device=device)
                for j, i in enumerate(rows):
                    if len(weights[i]):
                        w[j, width - len(weights[i]):] = torch.tensor(list(weights[i]), dtype=torch.float32)
                sums.start(rows, device)
                sums.count(w)
                forward(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=False, logits_to_keep=1)
                sums.end()

    def __repr__(self) -> str:
        return f"BridgeEngine({self.info.model_id!r})"


def _groups(plans: Sequence[SteeringPlan]) -> dict[tuple, list[int]]:
    """Prompt indices by steering identity (prompts that steer alike run together)."""
    groups: dict[tuple, list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(tuple(s.key() for s in plan), []).append(i)
    return groups


_ENGINES: "weakref.WeakKeyDictionary[torch.nn.Module, BridgeEngine]" = weakref.WeakKeyDictionary()


def engine_for(model) -> BridgeEngine:
    """The bridge's engine (created on first use; one per bridge, held in a weak table, not on the bridge)."""
    engine = _ENGINES.get(model)
    if engine is None:
        engine = BridgeEngine(model)
        _ENGINES[model] = engine
    return engine
