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
requests' decode tokens, and when a prompt's first positions come from the prefix cache (they count as
computed). The engine salts a steered request's cache blocks with a hash of its steering, so a cached
unsteered prefix can never serve a steered prompt, nor one steered otherwise.

Residual capture (derivation): each layer's ``forward`` also calls the opaque custom op
``vllm::lens_steer_capture`` with the stream after the block (``hidden_states + residual``). Its
body runs eagerly at every step (custom ops are not traced into the compiled graph) and, while a
:class:`_Capture` is active, adds the stream at the step's counted tokens to per-request running
sums; otherwise it returns at once. Which tokens count is decided in ``fill`` from each request's
positions, with a high-water mark so a recomputed (preempted) token is never counted twice. With
CUDA graphs the op must run outside the graphs: the engine adds it to vLLM's ``splitting_ops``.

Workers: the engine reaches this module's state in every worker through ``collective_rpc`` with the
``rpc_*`` functions below (in-process for one worker; pickled by reference for tensor or pipeline
parallel workers, which import this module themselves). Workers inherit the patch when forked; a
spawned worker (CUDA already initialised, Ray) gets it from the ``vllm.general_plugins`` entry point
:func:`plugin`, active only while ``LENS_STEER_VLLM_ARCH`` is set by the engine. The engine checks at
start that the workers' layers together carry the buffers of every layer, and refuses otherwise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ARCH_ENV", "CAPTURE_OP", "MAX_STEERINGS", "STATE", "install", "plugin"]

MAX_STEERINGS = 64
"""Bank rows per layer: distinct steered (plan, layer) pairs one ``generate`` call may hold."""

EXTRA_KEY = "lens_steer"
ROW_KEY = "lens_steer_row"
CAPTURE_OP = "vllm::lens_steer_capture"
ARCH_ENV = "LENS_STEER_VLLM_ARCH"


@dataclass
class _Plan:
    rows: dict[int, int]  # layer -> bank row
    single: dict[int, bool]  # layer -> single mode


@dataclass
class _Capture:
    """Running residual sums for one ``generate`` call: rows are requests (``ROW_KEY`` in extra_args).

    A token at position ``p`` of a request with ``n_prompt`` prompt tokens counts when
    ``lo <= p < hi`` for the positions asked: ``generated`` ``[n_prompt, n_prompt + max_new)``
    (the input at position ``n_prompt + k`` is response token ``k``; a stop token is never fed
    back), ``prompt`` ``[0, n_prompt)``, ``all`` both.
    """

    positions: str
    max_new: int
    sums: torch.Tensor  # [rows, layers, d_model] float32, on the model's device
    norms: torch.Tensor  # [rows, layers] float32
    counts: np.ndarray  # [rows] int64
    next_pos: np.ndarray  # [rows] first position not yet counted
    sel: torch.Tensor | None = None  # this step's counted token offsets
    rows: torch.Tensor | None = None  # their request rows

    def window(self, n_prompt: int) -> tuple[int, int]:
        lo = n_prompt if self.positions == "generated" else 0
        hi = n_prompt if self.positions == "prompt" else n_prompt + self.max_new
        return lo, hi


@dataclass
class _State:
    """Module-level state shared by the patched layers and runner (one engine per process)."""

    layers: dict[int, torch.nn.Module] = field(default_factory=dict)
    plans: dict[str, _Plan] = field(default_factory=dict)
    next_row: dict[int, int] = field(default_factory=dict)
    dirty: dict[int, int] = field(default_factory=dict)  # layer -> tokens of ls_idx that may be non-zero
    steps_steered: int = 0
    capture: _Capture | None = None
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
            self.capture = None

    def start_capture(self, n_rows: int, n_layers: int, positions: str, max_new: int) -> _Capture:
        """Begin running residual sums for ``n_rows`` requests (ended by :meth:`clear`)."""
        layer = next(iter(self.layers.values()))
        device, d_model = layer.ls_bank.device, layer.ls_bank.shape[1]
        self.capture = _Capture(positions, max_new,
                                torch.zeros(n_rows, n_layers, d_model, dtype=torch.float32, device=device),
                                torch.zeros(n_rows, n_layers, dtype=torch.float32, device=device),
                                np.zeros(n_rows, dtype=np.int64), np.zeros(n_rows, dtype=np.int64))
        return self.capture

    def _fill_capture(self, runner, num_scheduled_tokens: np.ndarray) -> None:
        cap = self.capture
        batch = runner.input_batch
        offsets, rows = [], []
        start = 0
        for i, req_id in enumerate(batch.req_ids[:batch.num_reqs]):
            n = int(num_scheduled_tokens[i])
            req = runner.requests[req_id]
            extra = getattr(req.sampling_params, "extra_args", None) or {}
            row = extra.get(ROW_KEY)
            if row is not None:
                first = int(batch.num_computed_tokens_cpu[i])
                lo, hi = cap.window(len(req.prompt_token_ids or ()))
                a, b = max(lo, first, int(cap.next_pos[row])), min(hi, first + n)
                if b > a:
                    offsets.append(np.arange(start + a - first, start + b - first))
                    rows.append(np.full(b - a, row))
                    cap.counts[row] += b - a
                    cap.next_pos[row] = b
            start += n
        if offsets:
            device = cap.sums.device
            cap.sel = torch.from_numpy(np.concatenate(offsets)).to(device)
            cap.rows = torch.from_numpy(np.concatenate(rows)).to(device)
        else:
            cap.sel = cap.rows = None

    def add_plan(self, key: str, deltas: dict[int, tuple[torch.Tensor, bool]]) -> None:
        """Register ``{layer: (c·v summed over the plan's steerings at that layer, single?)}`` under ``key``."""
        with self.lock:
            rows, single = {}, {}
            for layer_idx, (delta, is_single) in deltas.items():
                layer = self.layers.get(layer_idx)
                if layer is None:  # another pipeline stage holds this layer
                    continue
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
        if self.capture is not None:
            self._fill_capture(runner, num_scheduled_tokens)
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


# ---------------------------------------------------------------- worker RPCs (first argument: the worker)
def rpc_layers(worker) -> list[int]:
    """The layers of this worker that carry steering buffers."""
    return sorted(STATE.layers)


def rpc_embedding_rows(worker, rows: list[int]) -> dict[int, torch.Tensor]:
    """The input-embedding rows ``rows`` this worker holds (its vocabulary shard; none off the first
    pipeline stage), in float32 on CPU: enough for the model fingerprint without gathering the matrix."""
    emb = getattr(worker.get_model().model, "embed_tokens", None)
    weight = getattr(emb, "weight", None)
    if weight is None:
        return {}
    shard = getattr(emb, "shard_indices", None)
    start, end = (shard.org_vocab_start_index, shard.org_vocab_end_index) if shard else (0, weight.shape[0])
    return {r: weight[r - start].detach().float().cpu() for r in rows if start <= r < end}


def rpc_clear(worker) -> None:
    STATE.clear()


def rpc_add_plans(worker, plans: dict[str, dict[int, tuple[torch.Tensor, bool]]]) -> None:
    for key, deltas in plans.items():
        STATE.add_plan(key, deltas)


def rpc_start_capture(worker, n_rows: int, n_layers: int, positions: str, max_new: int) -> None:
    STATE.start_capture(n_rows, n_layers, positions, max_new)


def rpc_capture_result(worker) -> tuple[list[int], torch.Tensor, torch.Tensor, np.ndarray]:
    """This worker's layers and their sums ``[rows, layers, d]``, norm sums and the token counts (on CPU)."""
    cap, layers = STATE.capture, sorted(STATE.layers)
    return layers, cap.sums[:, layers].cpu(), cap.norms[:, layers].cpu(), cap.counts.copy()


def _capture(hidden_states: torch.Tensor, residual: torch.Tensor, flag: torch.Tensor, layer: int) -> None:
    """Body of ``vllm::lens_steer_capture``: add the stream after block ``layer`` at this step's counted
    tokens to the active capture (``flag`` is a per-layer dummy declared mutated so the compiler keeps
    the call)."""
    cap = STATE.capture
    if cap is None or cap.sel is None:
        return
    stream = hidden_states.index_select(0, cap.sel).float() + residual.index_select(0, cap.sel).float()
    cap.sums[:, layer].index_add_(0, cap.rows, stream)
    cap.norms[:, layer].index_add_(0, cap.rows, stream.norm(dim=-1))


def _capture_fake(hidden_states: torch.Tensor, residual: torch.Tensor, flag: torch.Tensor, layer: int) -> None:
    return None


def _register_capture_op() -> None:
    if hasattr(torch.ops.vllm, "lens_steer_capture"):
        return
    from vllm.utils.torch_utils import direct_register_custom_op

    direct_register_custom_op("lens_steer_capture", _capture, mutates_args=["flag"], fake_impl=_capture_fake)


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
        self.register_buffer("ls_flag", torch.zeros(1), persistent=False)
        self.ls_layer = _layer_index(kwargs.get("prefix", ""))
        STATE.layers[self.ls_layer] = self

    def forward(self, positions, hidden_states, residual, *args, **kwargs):
        hidden_states, residual = orig_forward(self, positions, hidden_states, residual, *args, **kwargs)
        hidden_states = hidden_states + self.ls_bank[self.ls_idx[: hidden_states.shape[0]]]
        torch.ops.vllm.lens_steer_capture(hidden_states, residual, self.ls_flag, self.ls_layer)
        return hidden_states, residual

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


def plugin() -> None:
    """vLLM general plugin (loaded in every vLLM process): patch when the engine asked for it."""
    import os

    arch = os.environ.get(ARCH_ENV)
    if arch:
        install(arch)


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
    _register_capture_op()
    _patch_layer_class(classes[architecture])
    _patch_runner()
