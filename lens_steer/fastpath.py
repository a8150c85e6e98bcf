"""Run a bridge's forward with Hugging Face's own decoder layers while only residual hooks are active.

A ``TransformerBridge`` runs every decoder layer through its hooked components (its own
attention reimplementation, ~40 hook points per block). When the only hooks attached
inside the blocks are on ``blocks.{l}.hook_resid_pre`` / ``hook_resid_post`` (steering,
residual means), that machinery changes nothing, so :func:`fast_forward` runs the
*original* HF layer classes instead: module objects rebuilt from the bridged tree that
hold the very same ``Parameter`` objects (no weight is copied), each wrapped so its input
and output pass through the block's ``hook_in`` / ``hook_out`` hook points. Every hook on
those points fires exactly as on the bridge path; everything outside the layers
(embedding, rotary, final norm, unembedding, hooks on the HF model itself) is the
bridge's own code, because the fast path is the same ``hf(...)`` call with the layer list
swapped for the length of that one call (restored in ``finally``; not thread-safe, like
hooks themselves).

By default the rebuilt layers run HF's SDPA kernel, what an unwrapped HF model runs by
default: derivation then gives the same vectors, bit for bit, as a plain-transformers
loop (``bench/bench_derive.py``), at its speed; against the bridge path (eager attention)
outputs agree to float rounding. ``set_fast_path(model, attention="eager")`` (or
``LENS_STEER_FAST_PATH=eager``) runs HF's eager attention instead, the math the bridge
uses, so both paths give bit-identical outputs on the architectures in
:data:`VERIFIED_ARCHITECTURES` (tested on tiny random models of each); eager costs about
1.4x at batch 16 on CPU (it materialises the attention matrix). Models without SDPA
support, or with attention-logit soft-capping (which SDPA cannot express), run eager.
Another architecture is checked once, on its first hook-free call, by comparing both
paths with the eager kernel, and keeps the bridge path if they differ.
Anything else inside the blocks (a hook on any other
point, a PyTorch hook, a global module hook, TransformerLens compatibility mode,
attention-result/split-input flags, a non-eager bridge config) selects the bridge path for
that call. :func:`fast_path_status` says which path the next call takes and why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

FAST_PATH_ENV = "LENS_STEER_FAST_PATH"
"""``0`` / ``off``: the bridge path everywhere (e.g. to compare the two); ``eager`` / ``sdpa``: the
kernel the fast path runs for models without a per-model :func:`set_fast_path` choice."""

VERIFIED_ARCHITECTURES: frozenset[str] = frozenset(
    {
        "Gemma2ForCausalLM",
        "GemmaForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Phi3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    }
)
"""HF architectures whose bridge and fast-path logits are tested bit-identical (tiny random models,
float32; Llama also bfloat16/float16) in ``tests/unit/test_fastpath.py``."""

_STATE_KEY = "_lens_steer_fast_path"
_ENABLED_KEY = "_lens_steer_fast_path_enabled"
_ATTENTION_KEY = "_lens_steer_fast_path_attention"
ATTENTION_KERNELS: tuple[str, ...] = ("eager", "sdpa")
# TransformerLens config flags that change what the bridge computes inside a block.
_BLOCK_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class _Unsupported(Exception):
    """The fast path cannot be built for this model; the message says why."""


def _unwrap(module: nn.Module, checks: list) -> nn.Module:
    """The HF module a bridge component wraps (the module itself if it is not a bridge)."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    while isinstance(module, GeneralizedComponent):
        inner = module._modules.get("_original_component")
        if inner is None:
            raise _Unsupported(f"bridge component {module.name!r} wraps no module")
        checks.append((module._modules, "_original_component", inner))
        module = inner
    return module


def _pristine_copy(module: nn.Module, checks: list) -> nn.Module:
    """A hook-free copy of ``module``'s HF structure, sharing its parameters and buffers.

    Bridge components are replaced by the HF modules they wrap, recursively. The copy is
    a new object of the same class with the same non-module attributes (config,
    layer_idx, ...), the same ``Parameter`` and buffer objects, and empty hook dicts.
    ``checks`` receives ``(dict, key, object)`` triples that stay true while the copy
    mirrors the source.
    """
    src = _unwrap(module, checks)
    if "forward" in src.__dict__:
        raise _Unsupported(f"{type(src).__name__}.forward is patched on the instance")
    cls = type(src)
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    fresh = set(new.__dict__)
    for key, value in src.__dict__.items():
        if key not in fresh:
            new.__dict__[key] = value
    new.training = src.training
    new._parameters = dict(src._parameters)
    new._buffers = dict(src._buffers)
    new._non_persistent_buffers_set = set(src._non_persistent_buffers_set)
    checks.append((src.__dict__, "training", src.training))
    for table in (src._parameters, src._buffers, src._modules):
        checks.append((table, None, len(table)))
        checks.extend((table, key, value) for key, value in table.items())
    for name, child in src._modules.items():
        new._modules[name] = None if child is None else _pristine_copy(child, checks)
    return new


def _route_through(block) -> tuple[Callable, Callable]:
    """Forward pre-hook and hook passing a layer's input/output through the block's hook points."""
    hook_in, hook_out = block.hook_in, block.hook_out

    def pre(_module, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            return (hook_in(args[0]),) + tuple(args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": hook_in(kwargs["hidden_states"])}
        raise RuntimeError("fast path: decoder layer called without hidden states")

    def post(_module, _args, _kwargs, output):
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (hook_out(output[0]),) + tuple(output[1:])
        if isinstance(output, torch.Tensor):
            return hook_out(output)
        raise RuntimeError(f"fast path: unexpected decoder layer output {type(output).__name__}")

    return pre, post


def _capture_hook_ids(block) -> set[int]:
    """Ids of the forward hooks the bridge itself registers inside ``block``."""
    return {h.id for h in getattr(block, "_capture_hook_handles", ())}


def _is_hf_output_capture(fn) -> bool:
    """Whether ``fn`` is the hook transformers installs (once, permanently) for ``output_hidden_states``
    / ``output_attentions``: it records only while HF's output collector is active, and calls
    that activate it take the bridge path (see :func:`_wants_outputs`)."""
    return (getattr(fn, "__module__", "") == "transformers.utils.output_capturing"
            and getattr(fn, "__qualname__", "").endswith("output_capturing_hook"))


def _benign_keys(hooks: dict, own_ids: set[int]) -> frozenset:
    """The keys of ``hooks`` that are the bridge's own capture hooks or HF's output-capture hooks."""
    return frozenset(k for k, fn in hooks.items() if k in own_ids or _is_hf_output_capture(fn))


def _wants_outputs(hf, kwargs: dict) -> bool:
    """Whether a call asks HF for per-layer outputs (recorded by hooks the rebuilt layers lack)."""
    config = hf.config
    for name in ("output_hidden_states", "output_attentions"):
        if kwargs.get(name) or getattr(config, name, False):
            return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # older transformers: outputs are returned, not hooked
        return False
    return _active_collector.get() is not None


class _FastPath:
    """The rebuilt layers of one bridge, the bookkeeping that keeps them in sync, and the checks."""

    def __init__(self, model) -> None:
        hf = model.original_model
        self.blocks = list(model.blocks)
        self.parent, self.attr = self._find_layer_list(hf, self.blocks)
        self.bridged_layers = self.parent._modules[self.attr]
        self.hf_config = hf.config
        self.block_dicts = [block.__dict__ for block in self.blocks]
        for block in self.blocks:
            # The bridge wires these on its first forward; wiring them now keeps the set
            # of its own hooks fixed, so the per-call check is one pass over hook dicts.
            wire = getattr(block, "_maybe_wire_capture_hooks", None)
            if wire is not None:
                wire()
        from transformer_lens.hook_points import HookPoint

        routed = {id(b.hook_in) for b in self.blocks} | {id(b.hook_out) for b in self.blocks}
        # Every module inside the blocks (each once, under its shortest name) but the
        # routed hook points: a hook on any of them must select the bridge path.
        self.watched: list[tuple[Any, str, nn.Module]] = []
        for index, block in enumerate(self.blocks):
            names: dict[int, tuple[str, nn.Module]] = {}
            for path, module in block.named_modules(prefix=f"blocks.{index}", remove_duplicate=False):
                if id(module) not in routed and (id(module) not in names or len(path) < len(names[id(module)][0])):
                    names[id(module)] = (getattr(module, "name", None) if isinstance(module, HookPoint) else None) or path, module
            self.watched.extend((block, path, module) for path, module in names.values())
        self._index_hook_dicts()
        self._build()
        self.verified: bool | None = None

    @staticmethod
    def _find_layer_list(hf: nn.Module, blocks: list) -> tuple[nn.Module, str]:
        for module in hf.modules():
            for name, child in module._modules.items():
                if isinstance(child, nn.ModuleList) and len(child) == len(blocks) and all(
                    a is b for a, b in zip(child, blocks)
                ):
                    return module, name
        raise _Unsupported("the bridge's blocks are not a layer list of the HF model")

    def _index_hook_dicts(self) -> None:
        """Split the watched hook dicts into those that must be empty and those holding benign hooks
        (the bridge's own capture hooks, HF's output-capture hooks) that must hold nothing else."""
        own = {id(block): _capture_hook_ids(block) for block in self.blocks}
        self.empty_dicts: list[dict] = []
        self.own_dicts: list[tuple[dict, frozenset]] = []
        for block, _path, module in self.watched:
            for dict_name in _HOOK_DICTS:
                hooks = module.__dict__[dict_name]
                keys = _benign_keys(hooks, own[id(block)])
                if keys:
                    self.own_dicts.append((hooks, keys))
                else:
                    self.empty_dicts.append(hooks)

    def _build(self) -> None:
        self.checks: list[tuple[dict, Any, Any]] = []
        layers = []
        for block in self.blocks:
            layer = _pristine_copy(block, self.checks)
            pre, post = _route_through(block)
            layer.register_forward_pre_hook(pre, with_kwargs=True)
            layer.register_forward_hook(post, with_kwargs=True)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    def _in_sync(self) -> bool:
        for table, key, value in self.checks:
            if key is None:
                if len(table) != value:
                    return False
            elif table.get(key) is not value:
                return False
        return True

    def sync(self) -> None:
        """Rebuild the copies if a parameter, buffer, submodule or train/eval flag changed."""
        if self.parent._modules.get(self.attr) is not self.bridged_layers:
            raise _Unsupported("the HF model's layer list was replaced")
        if not self._in_sync():
            self._build()

    def blocker(self, model) -> str | None:
        """Why a call must take the bridge path now (hooks, flags), or ``None``. Cheap: run per call."""
        cfg = model.cfg
        for flag in _BLOCK_FLAGS:
            if getattr(cfg, flag, False):
                return f"cfg.{flag} is set"
        if model.__dict__.get("compatibility_mode", False):
            return "TransformerLens compatibility mode is on"
        if getattr(self.hf_config, "_attn_implementation", "eager") != "eager":
            return "the HF model does not use eager attention"
        module_api = torch.nn.modules.module
        if any(getattr(module_api, name, None) for name in _GLOBAL_HOOKS):
            return "a global PyTorch module hook is registered"
        if any(self.empty_dicts) or any(len(d) != len(keys) or any(k not in keys for k in d) for d, keys in self.own_dicts):
            reason = self._foreign_hook()
            if reason is not None:
                return reason
            self._index_hook_dicts()  # only benign hooks changed (re-wired, or HF's installed)
        for d in self.block_dicts:
            if d.get("_stop_at_layer_idx") is not None or d.get("_start_at_layer_idx") is not None:
                return "start_at_layer / stop_at_layer is active"
        return None

    def _foreign_hook(self) -> str | None:
        """The first hook inside a block that is not benign (see :meth:`_index_hook_dicts`), described."""
        for block, path, module in self.watched:
            own = _capture_hook_ids(block)
            for dict_name in _HOOK_DICTS:
                hooks = module.__dict__[dict_name]
                if len(_benign_keys(hooks, own)) != len(hooks):
                    return f"a hook is attached at {path!r}"
        return None

    def own_hook_ids(self) -> set[int]:
        """Ids of all capture hooks the bridge registered in its blocks."""
        return set().union(*(_capture_hook_ids(b) for b in self.blocks))

    @contextmanager
    def swapped(self, attention: str = "eager") -> Iterator[None]:
        """The HF layers in place of the bridge's, running ``attention``, for one call.

        With SDPA the model config names it for the call too, so HF builds the mask SDPA
        wants (a boolean or no mask instead of the eager additive one, which would send
        SDPA to its slow, memory-hungry fallback).
        """
        config = self.hf_config
        kernel = config._attn_implementation
        self.parent._modules[self.attr] = self.layers
        try:
            if attention != kernel:
                config._attn_implementation = attention
            yield
        finally:
            self.parent._modules[self.attr] = self.bridged_layers
            if config._attn_implementation != kernel:
                config._attn_implementation = kernel


def _env_setting() -> str:
    return os.environ.get(FAST_PATH_ENV, "").strip().lower()


def _disabled_by_env() -> bool:
    return _env_setting() in ("0", "false", "no", "off")


def fast_path_attention(model) -> str:
    """The attention kernel the fast path runs for ``model``: ``"sdpa"`` (default) or ``"eager"``.

    Set per model with :func:`set_fast_path`; otherwise ``LENS_STEER_FAST_PATH=eager|sdpa``
    chooses for every model. The default is SDPA where :func:`_sdpa_ok`, eager otherwise.
    """
    chosen = model.__dict__.get(_ATTENTION_KEY)
    if chosen is None:
        env = _env_setting()
        chosen = env if env in ATTENTION_KERNELS else ("sdpa" if _sdpa_ok(model.original_model) else "eager")
    return chosen


def _state(model) -> _FastPath | str:
    """The model's fast-path state, built on first use, or the reason it cannot be built."""
    state = model.__dict__.get(_STATE_KEY)
    if state is None:
        try:
            state = _FastPath(model)
        except _Unsupported as exc:
            state = str(exc)
            logger.info("fast path unavailable for this model: %s", state)
        model.__dict__[_STATE_KEY] = state
    return state


def _sdpa_ok(hf) -> bool:
    """The model supports SDPA, its config is flat (switching the kernel touches no sub-config) and
    its attention has no logit soft-capping (SDPA would silently drop it)."""
    config = hf.config
    return (bool(getattr(hf, "_supports_sdpa", False)) and not getattr(config, "sub_configs", None)
            and getattr(config, "attn_logit_softcapping", None) is None)


def set_fast_path(model, enabled: bool = True, *, attention: str | None = None) -> None:
    """Allow (default) or forbid the fast path for ``model``, and choose its attention kernel.

    Args:
        model: A ``TransformerBridge``.
        enabled: Use the fast path when it applies.
        attention: ``"sdpa"`` (HF's fused kernel and default: faster, outputs equal to an
            unwrapped HF model's, and to the bridge path's up to float rounding) or
            ``"eager"`` (the bridge's own attention math: outputs bit-identical to the
            bridge path); ``None`` keeps the current choice.

    Raises:
        ValueError: unknown kernel, or ``"sdpa"`` on a model class without SDPA support.
    """
    if attention is not None:
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"unknown attention kernel {attention!r}; expected one of {ATTENTION_KERNELS}")
        if attention == "sdpa" and not _sdpa_ok(model.original_model):
            raise ValueError(f"{type(model.original_model).__name__}: SDPA is unsupported or its config has sub-configs")
        model.__dict__[_ATTENTION_KEY] = attention
    model.__dict__[_ENABLED_KEY] = bool(enabled)


@contextmanager
def fast_path_options(model, *, enabled: bool | None = None, attention: str | None = None) -> Iterator[None]:
    """:func:`set_fast_path` for the length of a ``with`` block; the previous settings come back after it."""
    saved = {key: model.__dict__[key] for key in (_ENABLED_KEY, _ATTENTION_KEY) if key in model.__dict__}
    try:
        set_fast_path(model, model.__dict__.get(_ENABLED_KEY, True) if enabled is None else enabled, attention=attention)
        yield
    finally:
        for key in (_ENABLED_KEY, _ATTENTION_KEY):
            model.__dict__.pop(key, None)
        model.__dict__.update(saved)


@contextmanager
def fast_path_disabled(model) -> Iterator[None]:
    """Use the bridge path for every call inside the block (restores the previous setting)."""
    with fast_path_options(model, enabled=False):
        yield


def _has_any_hook(model, state: _FastPath) -> bool:
    """Whether any hook (TransformerLens or PyTorch, bar the bridge's own) is attached anywhere."""
    module_api = torch.nn.modules.module
    if any(getattr(module_api, name, None) for name in _GLOBAL_HOOKS):
        return True
    own = state.own_hook_ids()
    return any(len(_benign_keys(m.__dict__[d], own)) != len(m.__dict__[d])
               for m in model.original_model.modules() for d in _HOOK_DICTS)


def _verify(model, state: _FastPath) -> bool:
    """Compare both paths once (eager kernel) on a small padded batch: prompt pass and one cached step."""
    from contextlib import nullcontext

    from transformers import DynamicCache

    hf = model.original_model
    device = next(hf.parameters()).device
    vocab = int(hf.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 7), generator=gen).to(device)
    step = torch.randint(0, vocab, (2, 1), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def run(context) -> list[torch.Tensor]:
        cache = DynamicCache()
        with context:
            a = hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True).logits
            b = hf(input_ids=step, attention_mask=torch.cat([mask, mask[:, :1]], 1), position_ids=positions[:, -1:] + 1,
                   past_key_values=cache, use_cache=True).logits
        return [a[mask.bool()], b]

    with torch.inference_mode():  # the structure is checked with the exact (eager) kernel
        bridge, fast = run(nullcontext()), run(state.swapped("eager"))
    same = all(torch.equal(x, y) for x, y in zip(bridge, fast))
    if not same:
        diff = max(float((x - y).abs().max()) for x, y in zip(bridge, fast))
        logger.warning("fast path disabled for %s: its logits differ from the bridge's (max |diff| %.3g)",
                       getattr(model.cfg, "architecture", "this model"), diff)
    return same


def _blocker(model, *, full: bool) -> str | None:
    """Why a call takes the bridge path, or ``None``; ``full`` also re-syncs and verifies."""
    if _disabled_by_env():
        return f"disabled by ${FAST_PATH_ENV}"
    if not model.__dict__.get(_ENABLED_KEY, True):
        return "disabled for this model (set_fast_path / fast_path_disabled)"
    state = _state(model)
    if isinstance(state, str):
        return state
    if full:
        try:
            state.sync()
        except _Unsupported as exc:
            return str(exc)
    reason = state.blocker(model)
    if reason is not None:
        return reason
    if state.verified is None and full:
        if str(getattr(model.cfg, "architecture", "")) in VERIFIED_ARCHITECTURES:
            state.verified = True
        elif not _has_any_hook(model, state):
            state.verified = _verify(model, state)
    if state.verified is None:
        return "architecture not verified yet (it is checked on the first hook-free call)"
    if not state.verified:
        return "this architecture's fast-path outputs differ from the bridge's"
    return None


def fast_path_status(model) -> str | None:
    """Why a forward call of ``model`` made now would take the bridge path, or ``None`` if fast."""
    return _blocker(model, full=True)


def attention_kernel(model) -> str:
    """The attention a hook-free forward of ``model`` runs now, for records: ``"sdpa"`` or
    ``"eager"`` on the fast path, ``"eager (bridge path)"`` otherwise."""
    if fast_path_status(model) is not None:
        return "eager (bridge path)"
    return _kernel_to_run(model)


def _kernel_to_run(model, *, warn: bool = False) -> str:
    """:func:`fast_path_attention`, with SDPA replaced by eager where :func:`_sdpa_ok` says no."""
    attention = fast_path_attention(model)
    if attention == "sdpa" and not _sdpa_ok(model.original_model):
        if warn:
            logger.warning("%s: SDPA is unsupported or the config has sub-configs; the fast path runs eager attention",
                           type(model.original_model).__name__)
        return "eager"
    return attention


def fast_forward(model) -> Callable[..., Any]:
    """A callable that runs ``hf_model(model)(*args, **kwargs)``, on the fast path when it applies.

    Make one per generation (batch): on creation it re-syncs the rebuilt layers with the
    bridge's parameters and verifies the architecture once; on every call it checks the
    attached hooks and flags again, so a hook added or removed between two calls (e.g. a
    pattern hook attached half-way through a generation) takes effect at the next call. A
    call asking for ``output_hidden_states`` / ``output_attentions`` takes the bridge path
    (transformers records those with hooks on the bridged layers).

    Example:
        >>> forward = fast_forward(model)
        >>> out = forward(input_ids=ids, attention_mask=mask, use_cache=False)
    """
    hf = model.original_model
    if _blocker(model, full=True) is not None:
        state = None
    else:
        state = model.__dict__[_STATE_KEY]
    attention = _kernel_to_run(model, warn=True)

    def forward(*args, **kwargs):
        if state is None or _wants_outputs(hf, kwargs) or _blocker(model, full=False) is not None:
            return hf(*args, **kwargs)
        with state.swapped(attention):
            return hf(*args, **kwargs)

    return forward
