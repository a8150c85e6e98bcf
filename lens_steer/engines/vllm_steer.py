"""Steering and residual capture inside vLLM's compiled model, in plain torch: the per-layer buffers and
forward hooks, the per-step index, and the running residual sums. vLLM itself is reached only through
:mod:`lens_steer.compat.vllm` (by :mod:`lens_steer.engines.vllm_worker`).

How it works (and why this way): hooks added to a vLLM model after it is compiled are ignored by its
graph, but tensors the traced code reads are live, so updating them in place between steps is honoured.
:meth:`_State.install` runs after the model is built and before vLLM compiles it: every decoder layer gets
two buffers,

* ``lens_steer_bank [max_steerings, d_model]``: rows of ``c·v`` (row 0 stays zero), and
* ``lens_steer_idx [max tokens of a step]``: for each token of the step, the bank row to add,

and a forward hook that adds ``lens_steer_bank[lens_steer_idx[:n]]`` to the stream after the block: to the
``hidden_states`` a ``"sum"`` layer returns beside its ``residual`` (the next layer adds the two), or to the
tensor a ``"whole"`` layer returns (:data:`lens_steer.compat.vllm.ARCHITECTURES`). The hook is traced
into the compiled graph with the rest of the layer.

:meth:`_State.fill` runs before every engine step, outside the graph: it writes ``lens_steer_idx`` from each
request's plan (the key in ``SamplingParams.extra_args["lens_steer"]``) and the position of each scheduled
token: continuous steers every token, single only positions inside the prompt, which stays right when a
prompt is split over steps (chunked prefill), shares a step with other requests' decode tokens, or starts
after a prefix served from the prefix cache (those positions count as computed). The engine salts a
steered request's cache blocks with a hash of its steering, so a cached unsteered prefix never serves a
steered prompt, nor one steered otherwise.

Residual capture (derivation): the hook also calls the opaque custom op ``lens_steer::capture`` with the
stream after the block. Custom ops are not traced into the graph: its body runs eagerly at every step and,
while a :class:`_Capture` is active, adds the stream at the step's counted tokens to per-request running
sums; otherwise it returns at once. Which tokens count is decided in ``fill`` from each request's
positions, with a high-water mark so a recomputed (preempted) token is never counted twice. Under CUDA
graphs the op must run outside the graphs: the engine adds it to vLLM's split points.

One :data:`STATE` per process: the engine's layers in-process, or a worker's layers in a worker process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["CAPTURE_OP", "EXTRA_KEY", "MAX_STEERINGS", "ROW_KEY", "STATE"]

MAX_STEERINGS = 64
"""Bank rows per layer: distinct steered (plan, layer) pairs one ``generate`` call may hold."""

EXTRA_KEY = "lens_steer"
ROW_KEY = "lens_steer_row"
CAPTURE_OP = "lens_steer::capture"
_PAD_TOKENS = 64  # room in the index for padded batches


@dataclass
class _Plan:
    rows: dict[int, int]  # layer -> bank row
    single: dict[int, bool]  # layer -> single mode


@dataclass
class _Capture:
    """Running residual sums for one ``generate`` call: rows are requests (``ROW_KEY`` in extra_args).

    A token at position ``p`` of a request with ``n_prompt`` prompt tokens counts when ``lo <= p < hi`` for
    the positions asked: ``generated`` ``[n_prompt, n_prompt + max_new)`` (the input at position
    ``n_prompt + k`` is response token ``k``; a stop token is never fed back), ``prompt`` ``[0, n_prompt)``,
    ``all`` both.
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
    """The steerable layers of this process's model and what one ``generate`` call put in them."""

    layers: dict[int, torch.nn.Module] = field(default_factory=dict)
    hooks: list = field(default_factory=list)
    plans: dict[str, _Plan] = field(default_factory=dict)
    next_row: dict[int, int] = field(default_factory=dict)
    dirty: dict[int, int] = field(default_factory=dict)  # layer -> tokens of the index that may be non-zero
    steps_steered: int = 0
    capture: _Capture | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, layers: dict[int, torch.nn.Module], convention: str, *, d_model: int, max_tokens: int,
                dtype: torch.dtype, device) -> None:
        """Give every layer its buffers and steering hook (replacing the layers of an earlier model)."""
        _register_capture_op()
        for handle in self.hooks:
            handle.remove()
        self.layers, self.hooks = {}, []
        self.plans.clear()
        self.next_row.clear()
        self.dirty.clear()
        self.capture = None
        for index, layer in layers.items():
            layer.register_buffer("lens_steer_bank", torch.zeros(MAX_STEERINGS, d_model, dtype=dtype, device=device),
                                  persistent=False)
            layer.register_buffer("lens_steer_idx", torch.zeros(max_tokens + _PAD_TOKENS, dtype=torch.long,
                                                                device=device), persistent=False)
            layer.register_buffer("lens_steer_flag", torch.zeros(1, device=device), persistent=False)
            self.hooks.append(layer.register_forward_hook(_steering_hook(index, convention)))
            self.layers[index] = layer

    def clear(self) -> None:
        """Forget every plan and zero the banks (after a ``generate`` call)."""
        with self.lock:
            self.plans.clear()
            self.next_row.clear()
            for layer in self.layers.values():
                layer.lens_steer_bank.zero_()
                layer.lens_steer_idx.zero_()
            self.dirty.clear()
            self.capture = None

    def is_clean(self) -> bool:
        """No plan, no capture, every bank and index zero."""
        return (not self.plans and self.capture is None
                and all(not layer.lens_steer_bank.any() and not layer.lens_steer_idx.any()
                        for layer in self.layers.values()))

    def add_plan(self, key: str, deltas: dict[int, tuple[torch.Tensor, bool]]) -> None:
        """Register ``{layer: (c·v summed over the plan's steerings at that layer, single?)}`` under ``key``."""
        with self.lock:
            rows, single = {}, {}
            for layer_idx, (delta, is_single) in deltas.items():
                layer = self.layers.get(layer_idx)
                if layer is None:  # another pipeline stage holds this layer
                    continue
                row = self.next_row.get(layer_idx, 1)
                if row >= layer.lens_steer_bank.shape[0]:
                    raise ValueError(f"more than {layer.lens_steer_bank.shape[0] - 1} distinct steerings at layer "
                                     f"{layer_idx} in one call; split the call")
                layer.lens_steer_bank[row].copy_(delta.to(layer.lens_steer_bank.dtype))
                self.next_row[layer_idx] = row + 1
                rows[layer_idx], single[layer_idx] = row, is_single
            self.plans[key] = _Plan(rows, single)

    def start_capture(self, n_rows: int, n_layers: int, positions: str, max_new: int) -> None:
        """Begin running residual sums for ``n_rows`` requests (ended by :meth:`clear`)."""
        bank = next(iter(self.layers.values())).lens_steer_bank
        device, d_model = bank.device, bank.shape[1]
        self.capture = _Capture(positions, max_new,
                                torch.zeros(n_rows, n_layers, d_model, dtype=torch.float32, device=device),
                                torch.zeros(n_rows, n_layers, dtype=torch.float32, device=device),
                                np.zeros(n_rows, dtype=np.int64), np.zeros(n_rows, dtype=np.int64))

    def capture_result(self) -> tuple[list[int], torch.Tensor, torch.Tensor, np.ndarray]:
        """This process's layers and their sums ``[rows, layers, d]``, norm sums and token counts (on CPU)."""
        cap, layers = self.capture, sorted(self.layers)
        return layers, cap.sums[:, layers].cpu(), cap.norms[:, layers].cpu(), cap.counts.copy()

    def fill(self, step: Sequence) -> None:
        """Write every layer's index (and the capture selection) for the step about to run.

        Args:
            step: The step's requests in token order, each with ``extra`` (its ``extra_args``), ``n_prompt``,
                ``first`` (position of its first scheduled token) and ``n`` (tokens scheduled).
        """
        if self.capture is not None:
            self._fill_capture(step)
        if not self.plans and not self.dirty:
            return
        total = sum(r.n for r in step)
        idx: dict[int, np.ndarray] = {}
        start = 0
        for r in step:
            plan = self.plans.get(r.extra.get(EXTRA_KEY)) if r.extra else None
            if plan is not None:
                for layer_idx, row in plan.rows.items():
                    arr = idx.setdefault(layer_idx, np.zeros(total, dtype=np.int64))
                    if plan.single[layer_idx]:
                        k = max(0, min(r.n, r.n_prompt - r.first))  # scheduled tokens still inside the prompt
                        arr[start:start + k] = row
                    else:
                        arr[start:start + r.n] = row
            start += r.n
        for layer_idx in set(self.dirty) | set(idx):
            layer = self.layers[layer_idx]
            stale = self.dirty.pop(layer_idx, 0)
            if stale:
                layer.lens_steer_idx[:stale].zero_()
            if layer_idx in idx:
                layer.lens_steer_idx[:total].copy_(torch.from_numpy(idx[layer_idx]))
                self.dirty[layer_idx] = total
        if idx:
            self.steps_steered += 1

    def _fill_capture(self, step: Sequence) -> None:
        cap = self.capture
        offsets, rows = [], []
        start = 0
        for r in step:
            row = r.extra.get(ROW_KEY) if r.extra else None
            if row is not None:
                lo, hi = cap.window(r.n_prompt)
                a, b = max(lo, r.first, int(cap.next_pos[row])), min(hi, r.first + r.n)
                if b > a:
                    offsets.append(np.arange(start + a - r.first, start + b - r.first))
                    rows.append(np.full(b - a, row))
                    cap.counts[row] += b - a
                    cap.next_pos[row] = b
            start += r.n
        if offsets:
            device = cap.sums.device
            cap.sel = torch.from_numpy(np.concatenate(offsets)).to(device)
            cap.rows = torch.from_numpy(np.concatenate(rows)).to(device)
        else:
            cap.sel = cap.rows = None


STATE = _State()


def _steering_hook(layer: int, convention: str):
    """The forward hook of block ``layer``: add the step's ``c·v`` rows to the stream after the block and
    hand the stream to the capture op. Traced into vLLM's compiled graph (``layer`` is a constant there)."""

    def hook(module, args, output):
        if convention == "sum":
            if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], torch.Tensor)):
                raise TypeError(f"block {layer} ({type(module).__name__}) does not return (hidden_states, residual)")
            hidden, residual = output
        else:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"block {layer} ({type(module).__name__}) does not return the residual stream")
            hidden, residual = output, None
        # tokens on the second-last axis: [tokens, d] (vLLM's layers) or [1, tokens, d] (Hugging Face's layers)
        hidden = hidden + module.lens_steer_bank[module.lens_steer_idx[: hidden.shape[-2]]]
        torch.ops.lens_steer.capture(hidden, residual, module.lens_steer_flag, layer)
        return (hidden, residual) if residual is not None else hidden

    return hook


def _capture(hidden: torch.Tensor, residual: torch.Tensor | None, flag: torch.Tensor, layer: int) -> None:
    """Body of ``lens_steer::capture``: add the stream after block ``layer`` at this step's counted tokens to
    the active capture (``flag``, a per-layer dummy declared mutated, keeps the call in the graph)."""
    cap = STATE.capture
    if cap is None or cap.sel is None:
        return
    d_model = hidden.shape[-1]
    stream = hidden.reshape(-1, d_model).index_select(0, cap.sel).float()
    if residual is not None:
        stream = stream + residual.reshape(-1, d_model).index_select(0, cap.sel).float()
    cap.sums[:, layer].index_add_(0, cap.rows, stream)
    cap.norms[:, layer].index_add_(0, cap.rows, stream.norm(dim=-1))


_LIBRARY: list = []  # keeps the torch.library registration alive


def _register_capture_op() -> None:
    """Define ``lens_steer::capture`` once per process (torch.library; vLLM needs no part in it)."""
    if _LIBRARY:
        return
    lib = torch.library.Library("lens_steer", "FRAGMENT")
    lib.define("capture(Tensor hidden, Tensor? residual, Tensor(a!) flag, int layer) -> ()")
    lib.impl("capture", _capture, "CompositeExplicitAutograd")
    torch.library.register_fake("lens_steer::capture", lambda hidden, residual, flag, layer: None, lib=lib)
    _LIBRARY.append(lib)
