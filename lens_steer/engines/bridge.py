"""The TransformerBridge engine: batched, left-padded, KV-cached generation from token ids, steering
hooks installed from :class:`~lens_steer.engines.base.Steering` specs (every position kind, schedule and
operator of :mod:`lens_steer.engines.steer_spec`), residual sums read during generation, on the fast path
where it applies. The engine owns its state (fast-path settings, active steerers that restart per prompt);
nothing is hung on the bridge.

Threads: every engine call and steering block holds the bridge's one re-entrant lock
(:attr:`BridgeEngine.lock`) from start to end, so another thread's call waits its turn; inside a
steering block, a forward of the bridge from another thread (``model(...)``) raises ``RuntimeError``."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import (Generation, ResidualSums, Steering, SteeringPlan, check_fits_context,
                                     context_length_of, normalise_steering)
from lens_steer.engines.decoding import check_finite, left_pad, next_token, plan_batches
from lens_steer.engines.fastpath import FastPath
from lens_steer.engines.hooks import attach, this_thread_only
from lens_steer.engines.selection import PositionSteerer
from lens_steer.engines.steering import SingleSteerer, steering_hooks
from lens_steer.models import ModelInfo, hf_model, model_info, n_layers, resid_post_name, stop_token_ids

__all__ = ["BridgeEngine", "engine_for"]


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

    Attributes:
        lock: The bridge's re-entrant lock (shared by every engine of the bridge), held for the whole
            of each engine call and steering block (see the module's docstring).
    """

    name = "bridge"

    def __init__(self, model) -> None:
        self.model = model
        self.fast_path = FastPath(model)
        self.single_steerers: list[SingleSteerer | PositionSteerer] = []  # restarted per batch (new_sequence)
        self.lock = _lock_of(model)

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

    @property
    def context_length(self) -> int | None:
        """The model's context length from its HF config (``None`` if the config names none)."""
        return context_length_of(hf_model(self.model).config)

    def _pad_id(self) -> int:
        """Left padding's id: the pad token, else the first stop token (else 0); padding is masked out."""
        pad = self.model.tokenizer.pad_token_id
        if pad is not None:
            return int(pad)
        stops = stop_token_ids(self.model)
        return stops[0] if stops else 0

    # ------------------------------------------------------------ steering
    @contextmanager
    def steering(self, plan: Steering | SteeringPlan | Sequence[Steering]) -> Iterator[list[Tensor]]:
        """Install the steering hooks of ``plan`` for the length of a ``with`` block (removed in ``finally``),
        holding :attr:`lock`; a forward of the bridge from another thread inside it raises ``RuntimeError``."""
        specs = (plan,) if isinstance(plan, Steering) else tuple(plan)
        with self.lock, this_thread_only(hf_model(self.model), "is being steered by another thread"), \
                steering_hooks(self.model, specs, self.info, self.single_steerers) as deltas:
            yield deltas

    def new_sequence(self) -> None:
        """Tell active steerers that restart per prompt (single mode, position kinds) that the next forward pass is
        a new prompt."""
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
        check_fits_context(prompts, config.max_new_tokens, self.context_length)
        stop_ids = stop_token_ids(self.model)
        if not stop_ids:
            raise ValueError("the tokenizer defines no EOS token; cannot tell where a response ends")
        plans = normalise_steering(steering, len(prompts))
        groups = _groups(plans)
        gen = torch.Generator().manual_seed(config.seed) if config.do_sample else None
        results: list[Generation | None] = [None] * len(prompts)
        with self.lock, torch.inference_mode(), \
                tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt") as bar:
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
        pad_id = self._pad_id()
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
            check_finite(logits, finished, step)
            nxt = next_token(logits, cfg, gen)
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
        check_fits_context(prompts, 0, self.context_length)
        plans = normalise_steering(steering, len(prompts))
        pad_id = self._pad_id()
        out: list[dict[int, float] | None] = [None] * len(prompts)
        with self.lock, torch.inference_mode():
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
        check_fits_context(sequences, 0, self.context_length)
        pad_id = self._pad_id()
        batches = plan_batches([len(s) for s in sequences], config.batch_size, config.max_batch_tokens)
        sums = _BatchSums(model, residuals)
        with self.lock, torch.inference_mode(), attach(model, sums.hooks()):
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
_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_TABLES = threading.RLock()
"""Guards :data:`_ENGINES` and :data:`_LOCKS`, so two threads never make two engines or locks for one bridge."""


def _lock_of(model) -> threading.RLock:
    """The bridge's one lock (created on first use; held in a weak table, not on the bridge)."""
    with _TABLES:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def engine_for(model) -> BridgeEngine:
    """The bridge's engine (created on first use; one per bridge, held in a weak table, not on the bridge)."""
    with _TABLES:
        engine = _ENGINES.get(model)
        if engine is None:
            engine = _ENGINES[model] = BridgeEngine(model)
        return engine
