"""Steering inside vLLM's compiled model: per-layer buffers the decoder layers add, and the per-token
index the model runner fills before every step.

How it works (and why this way): hooks added to a vLLM model after it is built are ignored by its
torch.compile'd graph, but tensors the traced ``forward`` reads are live, so updating them in place
between steps is honoured. Before the engine is built, :func:`install` patches the decoder-layer
class so every layer owns two buffers,

* ``ls_bank [max_steerings, d_model]``: rows of ``c·v`` (row 0 stays zero), and
* ``ls_idx [max_num_batched_tokens]``: for each token of the step, the bank row to add,

and its ``forward`` returns ``hidden_states + ls_bank[ls_idx[:n]]`` with the residual unchanged. A
vLLM decoder layer returns ``(hidden_states, residual)`` and the next layer fuses the add, so the
residual stream after block ``l`` is their sum: adding to ``hidden_states`` adds to the stream.

The model runner's ``_prepare_inputs`` is wrapped to fill ``ls_idx`` for the step from each
request's plan (found by the key in ``SamplingParams.extra_args["lens_steer"]``) and the position
of each scheduled token: continuous steers every token, single only positions inside the prompt,
which stays right when a prompt is split over steps (chunked prefill) or shares a step with other
requests' decode tokens. Prefix caching is switched off by the engine, so a cached unsteered prefix
can never serve a steered prompt.

Only the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one worker) shares the plans with
the runner; the engine refuses tensor/pipeline parallelism for that reason.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["MAX_STEERINGS", "STATE", "install"]

MAX_STEERINGS = 64
"""Bank rows per layer: distinct steered (plan, layer) pairs one ``generate`` call may hold."""

EXTRA_KEY = "lens_steer"


@dataclass
class _Plan:
    rows: dict[int, int]  # layer -> bank row
    single: dict[int, bool]  # layer -> single mode


@dataclass
class _State:
    """Module-level state shared by the patched layers and runner (one engine per process)."""

    layers: dict[int, torch.nn.Module] = field(default_factory=dict)
    plans: dict[str, _Plan] = field(default_factory=dict)
    next_row: dict[int, int] = field(default_factory=dict)
    dirty: dict[int, int] = field(default_factory=dict)  # layer -> tokens of ls_idx that may be non-zero
    steps_steered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        """Forget every plan and zero the banks (after a ``generate`` call)."""
        with self.lock:
            self.plans.clear()
            self.next_row.clear()
            for layer in self.layers.values():
                layer.ls_bank.zero_()
                layer.ls_idx.zero_()
            self.dirty.clear()

    def add_plan(self, key: str, deltas: dict[int, tuple[torch.Tensor, bool]]) -> None:
        """Register ``{layer: (c·v summed over the plan's steerings at that layer, single?)}`` under ``key``."""
        with self.lock:
            rows, single = {}, {}
            for layer_idx, (delta, is_single) in deltas.items():
                layer = self.layers[layer_idx]
                row = self.next_row.get(layer_idx, 1)
                if row >= layer.ls_bank.shape[0]:
                    raise ValueError(f"more than {layer.ls_bank.shape[0] - 1} distinct steerings at layer "
                                     f"{layer_idx} in one call; split the call")
                layer.ls_bank[row].copy_(delta.to(layer.ls_bank.dtype))
                self.next_row[layer_idx] = row + 1
                rows[layer_idx], single[layer_idx] = row, is_single
            self.plans[key] = _Plan(rows, single)

    def fill(self, runner, num_scheduled_tokens: np.ndarray) -> None:
        """Write every layer's ``ls_idx`` for the step about to run."""
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        if not self.plans and not self.dirty:
            return
        total = int(num_scheduled_tokens.sum())
        idx: dict[int, np.ndarray] = {}
        start = 0
        for i, req_id in enumerate(batch.req_ids[:num_reqs]):
            n = int(num_scheduled_tokens[i])
            req = runner.requests[req_id]
            extra = getattr(req.sampling_params, "extra_args", None) or {}
            plan = self.plans.get(extra.get(EXTRA_KEY)) if extra else None
            if plan is not None:
                first = int(batch.num_computed_tokens_cpu[i])
                n_prompt = len(req.prompt_token_ids or ())
                for layer_idx, row in plan.rows.items():
                    arr = idx.setdefault(layer_idx, np.zeros(total, dtype=np.int64))
                    if plan.single[layer_idx]:
                        k = max(0, min(n, n_prompt - first))  # scheduled tokens still inside the prompt
                        arr[start:start + k] = row
                    else:
                        arr[start:start + n] = row
            start += n
        for layer_idx in set(self.dirty) | set(idx):
            layer = self.layers[layer_idx]
            stale = self.dirty.pop(layer_idx, 0)
            if stale:
                layer.ls_idx[:stale].zero_()
            if layer_idx in idx:
                layer.ls_idx[:total].copy_(torch.from_numpy(idx[layer_idx]))
                self.dirty[layer_idx] = total
        if idx:
            self.steps_steered += 1


STATE = _State()
_PATCHED: set[str] = set()


def _layer_index(prefix: str) -> int:
    tail = prefix.rsplit(".", 1)[-1]
    if not tail.isdigit():
        raise RuntimeError(f"cannot read the layer index from the module prefix {prefix!r}")
    return int(tail)


def _patch_layer_class(cls) -> None:
    if getattr(cls, "_lens_steer_patched", False):
        return
    orig_init, orig_forward = cls.__init__, cls.forward

    def __init__(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        from vllm.config import get_current_vllm_config

        vcfg = get_current_vllm_config()
        hidden = vcfg.model_config.get_hidden_size()
        max_tokens = int(vcfg.scheduler_config.max_num_batched_tokens) + 64  # room for padded batches
        dtype = vcfg.model_config.dtype
        self.register_buffer("ls_bank", torch.zeros(MAX_STEERINGS, hidden, dtype=dtype), persistent=False)
        self.register_buffer("ls_idx", torch.zeros(max_tokens, dtype=torch.long), persistent=False)
        STATE.layers[_layer_index(kwargs.get("prefix", ""))] = self

    def forward(self, positions, hidden_states, residual, *args, **kwargs):
        hidden_states, residual = orig_forward(self, positions, hidden_states, residual, *args, **kwargs)
        return hidden_states + self.ls_bank[self.ls_idx[: hidden_states.shape[0]]], residual

    cls.__init__, cls.forward = __init__, forward
    cls._lens_steer_patched = True


def _patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_lens_steer_patched", False):
        return
    orig = GPUModelRunner._prepare_inputs

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        STATE.fill(self, num_scheduled_tokens)  # positions are read before the runner advances them
        return orig(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)

    GPUModelRunner._prepare_inputs = _prepare_inputs
    GPUModelRunner._lens_steer_patched = True


def install(architecture: str) -> None:
    """Patch the decoder-layer class of ``architecture`` and the model runner (idempotent).

    Raises:
        NotImplementedError: For an architecture whose decoder layer is not patched here.
    """
    from vllm.model_executor.models import llama

    classes = {"LlamaForCausalLM": llama.LlamaDecoderLayer}
    try:
        from vllm.model_executor.models import mistral

        classes["MistralForCausalLM"] = getattr(mistral, "MistralDecoderLayer", llama.LlamaDecoderLayer)
    except ImportError:
        classes["MistralForCausalLM"] = llama.LlamaDecoderLayer
    if architecture not in classes:
        raise NotImplementedError(f"the vLLM engine steers {sorted(classes)} so far, not {architecture}")
    _patch_layer_class(classes[architecture])
    _patch_runner()
