"""Steering inside vLLM's compiled model, in plain torch: the per-layer buffers and forward hooks, and the per-step
fill that writes them. vLLM itself is reached only through :mod:`lens_steer.compat.vllm` (by
:mod:`lens_steer.engines.vllm_worker`); plans arrive as plain data built by :mod:`lens_steer.engines.vllm_plans`.

How it works (and why this way): hooks added to a vLLM model after it is compiled are ignored by its graph, but
tensors the traced code reads are live, so updating them in place between steps is honoured. :meth:`_State.install`
runs after the model is built and before vLLM compiles it: every decoder layer gets a forward hook, traced into the
compiled graph with the rest of the layer, and these buffers:

* ``lens_steer_bank [MAX_STEERINGS, d_model]`` (model dtype) and ``lens_steer_idx [tokens]``: the paper's presets.
  Each token of the step adds bank row ``idx`` (row 0 stays zero): ``c·v`` summed over a plan's leading presets
  of one mode at the layer, exactly as before specs existed.
* ``lens_steer_dirs [MAX_STEERINGS, d_model]`` (float32, the directions v) and ``lens_steer_ops [slots, 5, tokens]``
  (float32): ``slots`` operator slots applied one after the other, each reading per token a direction row (0:
  untouched), ``a``, ``b``, an add-norm flag ``m`` and ``|v|``, and computing on the stream x after the block, in
  float32, ``y = x - a(x·u)u + b·v`` (u = v/|v|), rescaled to ``|x|`` where ``m`` is 1: add, add-norm, clamp and
  ablate are this formula with (a, b, m) from :func:`~lens_steer.engines.vllm_select.operator_fields`. Selected
  tokens take ``y``; the others stay bit for bit what they were.

Where the stream is: a ``"sum"`` layer returns ``(hidden_states, residual)`` and the next layer adds them; a preset
adds ``c·v`` to ``hidden_states``, an operator slot sets ``hidden_states`` to ``y`` and ``residual`` to 0 at the
tokens it steers. A ``"whole"`` layer returns the stream (:data:`lens_steer.compat.vllm.ARCHITECTURES`).

:meth:`_State.fill` runs before every engine step, outside the graph: from each request's plan (the key in
``SamplingParams.extra_args["lens_steer"]``), its prompt length, the positions of its scheduled tokens and its
token ids, it decides every steering's positions and effective coefficients
(:class:`~lens_steer.engines.vllm_select.Selector`) and writes the index and slot fields of each layer it steers:
right when a prompt is split over steps (chunked prefill), shares a step with other requests, or starts after a
prefix served from the prefix cache. Residual capture: :mod:`lens_steer.engines.vllm_capture`.

One :data:`STATE` per process: the engine's layers in-process, or a worker's layers in a worker process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lens_steer.engines import vllm_capture
from lens_steer.engines.vllm_select import OP_FIELDS, Selector, operator_fields, operator_fields_one

__all__ = ["EXTRA_KEY", "MAX_STEERINGS", "STATE"]

MAX_STEERINGS = 64
"""Rows per layer of the preset bank and of the direction bank: distinct steerings at a layer in one call."""

EXTRA_KEY = "lens_steer"
_PAD_TOKENS = 64  # room in the per-token buffers for padded batches


@dataclass
class _Plan:
    rows: dict[int, int]  # layer -> preset bank row
    single: dict[int, bool]  # layer -> the presets there are single mode
    selectors: list[Selector]  # one per steering applied in an operator slot
    slots: dict[int, list[tuple[int, int, float, str]]]  # layer -> [(selector, direction row, |v|, op)], in order


@dataclass
class _State:
    """The steerable layers of this process's model and what one ``generate`` call put in them."""

    layers: dict[int, torch.nn.Module] = field(default_factory=dict)
    hooks: list = field(default_factory=list)
    n_slots: int = 0
    tokens_known: bool = True  # the runner has each request's sampled tokens before a step (no async scheduling)
    plans: dict[str, _Plan] = field(default_factory=dict)
    next_row: dict[int, int] = field(default_factory=dict)
    next_dir: dict[int, int] = field(default_factory=dict)
    free_rows: dict[int, list[int]] = field(default_factory=dict)  # layer -> preset rows a removed plan gave back
    free_dirs: dict[int, list[int]] = field(default_factory=dict)  # layer -> direction rows a removed plan gave back
    dirty: dict[int, int] = field(default_factory=dict)  # layer -> tokens of the index that may be non-zero
    ops_dirty: dict[int, int] = field(default_factory=dict)  # layer -> tokens of the slot fields that may be non-zero
    steps_steered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def capture(self) -> vllm_capture.Capture | None:
        return vllm_capture.active[0] if vllm_capture.active else None

    def install(self, layers: dict[int, torch.nn.Module], convention: str, *, d_model: int, max_tokens: int,
                dtype: torch.dtype, device, n_slots: int) -> None:
        """Give every layer its buffers and steering hook (replacing the layers of an earlier model)."""
        vllm_capture.register_capture_op()
        for handle in self.hooks:
            handle.remove()
        self.layers, self.hooks, self.n_slots = {}, [], int(n_slots)
        self.clear()
        width = max_tokens + _PAD_TOKENS
        for index, layer in layers.items():
            layer.register_buffer("lens_steer_bank", torch.zeros(MAX_STEERINGS, d_model, dtype=dtype, device=device),
                                  persistent=False)
            layer.register_buffer("lens_steer_idx", torch.zeros(width, dtype=torch.long, device=device),
                                  persistent=False)
            layer.register_buffer("lens_steer_flag", torch.zeros(1, device=device), persistent=False)
            if self.n_slots:
                layer.register_buffer("lens_steer_dirs", torch.zeros(MAX_STEERINGS, d_model, dtype=torch.float32,
                                                                     device=device), persistent=False)
                layer.register_buffer("lens_steer_ops", torch.zeros(self.n_slots, OP_FIELDS, width,
                                                                    dtype=torch.float32, device=device),
                                      persistent=False)
            self.hooks.append(layer.register_forward_hook(_steering_hook(index, convention, self.n_slots)))
            self.layers[index] = layer

    def _buffers(self, layer) -> list[torch.Tensor]:
        names = ("lens_steer_bank", "lens_steer_idx") + (("lens_steer_dirs", "lens_steer_ops") if self.n_slots else ())
        return [getattr(layer, name) for name in names]

    def clear(self) -> None:
        """Forget every plan and capture and zero every buffer (after a ``generate`` call)."""
        with self.lock:
            self.plans.clear()
            self.next_row.clear()
            self.next_dir.clear()
            self.free_rows.clear()
            self.free_dirs.clear()
            for layer in self.layers.values():
                for buf in self._buffers(layer):
                    buf.zero_()
            self.dirty.clear()
            self.ops_dirty.clear()
            vllm_capture.active.clear()

    def is_clean(self) -> bool:
        """No plan, no capture, every buffer zero."""
        return (not self.plans and self.capture is None
                and all(not buf.any() for layer in self.layers.values() for buf in self._buffers(layer)))

    def add_plan(self, key: str, plan: dict) -> None:
        """Register a plan (:func:`lens_steer.engines.vllm_plans.compile_plan`'s wire form) under ``key``: its preset
        bank rows, its selectors and its operator slots, per layer this process holds."""
        with self.lock:
            if key in self.plans:  # registered already (a server registers each distinct plan once)
                return
            selectors = [Selector(text, coeff, tuple(map(tuple, triggers)), markers and tuple(markers))
                         for text, coeff, triggers, markers in plan["selectors"]]
            if not self.tokens_known and any(s.reads_tokens for s in selectors):
                kinds = sorted({s.kind for s in selectors if s.reads_tokens})
                raise ValueError(f"at={'/'.join(kinds)} reads each request's tokens before every step, which vLLM's "
                                 "async scheduling does not provide; build the engine without async_scheduling")
            rows, single, slots = {}, {}, {}
            for layer_idx, (delta, is_single) in plan["bank"].items():
                layer = self.layers.get(layer_idx)
                if layer is not None:  # else another pipeline stage holds this layer
                    rows[layer_idx] = self._take(self.next_row, self.free_rows, layer_idx, layer.lens_steer_bank,
                                                 delta)
                    single[layer_idx] = is_single
            for layer_idx, entries in plan["slots"].items():
                layer = self.layers.get(layer_idx)
                if layer is None:
                    continue
                if len(entries) > self.n_slots:
                    raise ValueError(f"layer {layer_idx}: {len(entries)} steerings to apply in order, more than the "
                                     f"engine's {self.n_slots} operator slots per layer (VllmEngine(steer_slots=))")
                slots[layer_idx] = [(si, self._take(self.next_dir, self.free_dirs, layer_idx, layer.lens_steer_dirs, v),
                                     float(v.float().norm()), op) for si, v, op in entries]
            self.plans[key] = _Plan(rows, single, selectors, slots)

    @staticmethod
    def _take(counter: dict[int, int], free: dict[int, list[int]], layer_idx: int, bank: torch.Tensor,
              value: torch.Tensor) -> int:
        if free.get(layer_idx):
            row = free[layer_idx].pop()
        else:
            row = counter.get(layer_idx, 1)
            if row >= bank.shape[0]:
                raise ValueError(f"more than {bank.shape[0] - 1} distinct steerings at layer {layer_idx} at once; "
                                 "split the call (or wait for steered requests to finish)")
            counter[layer_idx] = row + 1
        bank[row].copy_(value.to(bank.dtype))
        return row

    def remove_plan(self, key: str) -> None:
        """Forget one plan and give its bank and direction rows back (zeroed); a step that still names it steers
        nothing (a server removes only plans no request in flight uses)."""
        with self.lock:
            plan = self.plans.pop(key, None)
            if plan is None:
                return
            for layer_idx, row in plan.rows.items():
                self.layers[layer_idx].lens_steer_bank[row].zero_()
                self.free_rows.setdefault(layer_idx, []).append(row)
            for layer_idx, entries in plan.slots.items():
                for _si, row, _norm, _op in entries:
                    self.layers[layer_idx].lens_steer_dirs[row].zero_()
                    self.free_dirs.setdefault(layer_idx, []).append(row)

    def start_capture(self, n_rows: int, n_layers: int, positions: str, max_new: int) -> None:
        """Begin running residual sums for ``n_rows`` requests (ended by :meth:`clear`)."""
        bank = next(iter(self.layers.values())).lens_steer_bank
        vllm_capture.active[:] = [vllm_capture.Capture.empty(n_rows, n_layers, bank.shape[1], positions, max_new,
                                                             bank.device)]

    def capture_result(self) -> tuple[list[int], torch.Tensor, torch.Tensor, np.ndarray]:
        """This process's layers and their sums ``[rows, layers, d]``, norm sums and token counts (on CPU)."""
        cap, layers = self.capture, sorted(self.layers)
        return layers, cap.sums[:, layers].cpu(), cap.norms[:, layers].cpu(), cap.counts.copy()

    def fill(self, step: Sequence) -> None:
        """Write every steered layer's buffers (and the capture selection) for the step about to run.

        Args:
            step: The step's requests in token order (:class:`lens_steer.compat.vllm.StepRequest`): ``extra`` (its
                ``extra_args``), ``n_prompt``, ``first`` (position of its first scheduled token), ``n`` (tokens
                scheduled), ``req_id`` and ``tokens`` (its token ids, at least up to the step's last position).
        """
        if self.capture is not None:
            self.capture.fill(step)
        if not self.plans and not self.dirty and not self.ops_dirty:
            return
        total = sum(r.n for r in step)
        idx: dict[int, np.ndarray] = {}
        ops: dict[int, np.ndarray] = {}
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
                if plan.slots:
                    self._fill_slots(plan, r, start, total, ops)
            start += r.n
        self._upload(idx, "lens_steer_idx", self.dirty, total)
        self._upload(ops, "lens_steer_ops", self.ops_dirty, total)
        if idx or ops:
            self.steps_steered += 1

    def _slot_array(self, ops: dict[int, np.ndarray], layer_idx: int, total: int) -> np.ndarray:
        arr = ops.get(layer_idx)
        if arr is None:
            arr = ops[layer_idx] = np.zeros((self.n_slots, OP_FIELDS, total), dtype=np.float32)
        return arr

    def _fill_slots(self, plan: _Plan, r, start: int, total: int, ops: dict[int, np.ndarray]) -> None:
        if r.n == 1:  # a decode step: scalars, no arrays
            es = [s.decide_one(r.tokens, r.n_prompt, r.first, r.req_id) for s in plan.selectors]
            for layer_idx, entries in plan.slots.items():
                for k, (si, row, norm, op) in enumerate(entries):
                    if es[si] is not None:
                        self._slot_array(ops, layer_idx, total)[k, :, start] = (row, *operator_fields_one(op, es[si]),
                                                                                norm)
            return
        decided = [s.decide(r.tokens, r.n_prompt, r.first, r.n, r.req_id) for s in plan.selectors]
        fields: dict[tuple[int, str], tuple] = {}
        end = start + r.n
        for layer_idx, entries in plan.slots.items():
            for k, (si, row, norm, op) in enumerate(entries):
                sel, e = decided[si]
                if not sel.any():
                    continue
                if (si, op) not in fields:
                    fields[si, op] = operator_fields(op, e)
                a, b, m = fields[si, op]
                block = self._slot_array(ops, layer_idx, total)[k, :, start:end]
                block[0], block[1], block[2], block[3], block[4] = row, a, b, m, norm
                block[:, ~sel] = 0  # row 0: untouched

    def _upload(self, arrays: dict[int, np.ndarray], name: str, dirty: dict[int, int], total: int) -> None:
        """Copy each layer's array into its buffer; zero what an earlier step left in layers it no longer steers."""
        for layer_idx in set(dirty) | set(arrays):
            buf = getattr(self.layers[layer_idx], name)
            stale = dirty.pop(layer_idx, 0)
            if stale:
                buf[..., :stale].zero_()
            if layer_idx in arrays:
                buf[..., :total].copy_(torch.from_numpy(arrays[layer_idx]))
                dirty[layer_idx] = total


STATE = _State()


def _operator_slot(dirs: torch.Tensor, ops: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None):
    """One operator slot (see the module docstring): ``ops`` ``[5, tokens]`` holds each token's direction row, a,
    b, m and |v|. Returns the new ``(hidden, residual)``."""
    row = ops[0].long()
    a, b, m, norm = ops[1, :, None], ops[2, :, None], ops[3, :, None], ops[4, :, None]
    v = dirs[row]
    u = v / torch.where(norm > 0, norm, torch.ones_like(norm))
    x = (hidden if residual is None else hidden + residual).float()
    proj = (x * u).sum(-1, keepdim=True)
    y = x - (a * proj) * u + b * v
    yn = y.norm(dim=-1, keepdim=True)
    y = y * torch.where((m > 0) & (yn > 0), x.norm(dim=-1, keepdim=True) / yn, torch.ones_like(yn))
    sel = (row > 0)[:, None]
    hidden = torch.where(sel, y.to(hidden.dtype), hidden)
    if residual is not None:
        residual = torch.where(sel, torch.zeros_like(residual), residual)
    return hidden, residual


def _steering_hook(layer: int, convention: str, n_slots: int):
    """The forward hook of block ``layer``: add the step's preset rows, apply the operator slots to the stream
    after the block, and hand the stream to the capture op. Traced into vLLM's compiled graph (``layer`` and
    ``n_slots`` are constants there)."""

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
        n = hidden.shape[-2]
        hidden = hidden + module.lens_steer_bank[module.lens_steer_idx[:n]]
        for k in range(n_slots):
            hidden, residual = _operator_slot(module.lens_steer_dirs, module.lens_steer_ops[k, :, :n], hidden,
                                              residual)
        torch.ops.lens_steer.capture(hidden, residual, module.lens_steer_flag, layer)
        return (hidden, residual) if residual is not None else hidden

    return hook
