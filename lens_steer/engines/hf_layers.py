"""The fast path's rebuilt layers: hook-free copies of a bridge's HF decoder layers sharing its parameters,
routed through the blocks' ``hook_in`` / ``hook_out`` points, and the checks that say when they may run.

TransformerLens and transformers internals are reached through :mod:`lens_steer.compat` only; PyTorch's
hook tables (``_forward_hooks``, ``_global_forward_hooks``, ...) and ``_modules`` are read here directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lens_steer.compat import transformer_lens as tl_compat
from lens_steer.compat import transformers as hf_compat
from lens_steer.compat.transformer_lens import capture_hook_ids

# TransformerLens config flags that change what the bridge computes inside a block.
_BLOCK_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class Unsupported(Exception):
    """The fast path cannot be built for this model; the message says why."""


def _unwrap(module: nn.Module, checks: list) -> nn.Module:
    """The HF module a bridge component wraps (the module itself if it is not a bridge)."""
    key = tl_compat.WRAPPED_MODULE_KEY
    while tl_compat.is_component(module):
        inner = module._modules.get(key)
        if inner is None:
            raise Unsupported(f"bridge component {module.name!r} wraps no module")
        checks.append((module._modules, key, inner))
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
        raise Unsupported(f"{type(src).__name__}.forward is patched on the instance")
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


def benign_keys(hooks: dict, own_ids: set[int]) -> frozenset:
    """The keys of ``hooks`` that are the bridge's own capture hooks or HF's output-capture hooks (these
    record only while HF's output collector is active, and calls that activate it take the bridge path:
    see :func:`wants_outputs`)."""
    return frozenset(k for k, fn in hooks.items() if k in own_ids or hf_compat.is_output_capture_hook(fn))


def wants_outputs(hf, kwargs: dict) -> bool:
    """Whether a call asks HF for per-layer outputs (recorded by hooks the rebuilt layers lack)."""
    config = hf.config
    for name in ("output_hidden_states", "output_attentions"):
        if kwargs.get(name) or getattr(config, name, False):
            return True
    return hf_compat.output_collector_active()


class FastPathLayers:
    """The rebuilt layers of one bridge, the bookkeeping that keeps them in sync, and the checks."""

    def __init__(self, model) -> None:
        hf = model.original_model
        self.blocks = list(model.blocks)
        self.parent, self.attr = self._find_layer_list(hf, self.blocks)
        self.bridged_layers = self.parent._modules[self.attr]
        self.hf_config = hf.config
        for block in self.blocks:
            # The bridge wires these on its first forward; wiring them now keeps the set
            # of its own hooks fixed, so the per-call check is one pass over hook dicts.
            tl_compat.wire_capture_hooks(block)
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
        raise Unsupported("the bridge's blocks are not a layer list of the HF model")

    def _index_hook_dicts(self) -> None:
        """Split the watched hook dicts into those that must be empty and those holding benign hooks
        (the bridge's own capture hooks, HF's output-capture hooks) that must hold nothing else."""
        own = {id(block): capture_hook_ids(block) for block in self.blocks}
        self.empty_dicts: list[dict] = []
        self.own_dicts: list[tuple[dict, frozenset]] = []
        for block, _path, module in self.watched:
            for dict_name in HOOK_DICTS:
                hooks = module.__dict__[dict_name]
                keys = benign_keys(hooks, own[id(block)])
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
            raise Unsupported("the HF model's layer list was replaced")
        if not self._in_sync():
            self._build()

    def blocker(self, model) -> str | None:
        """Why a call must take the bridge path now (hooks, flags), or ``None``. Cheap: run per call."""
        cfg = model.cfg
        for flag in _BLOCK_FLAGS:
            if getattr(cfg, flag, False):
                return f"cfg.{flag} is set"
        if tl_compat.in_compatibility_mode(model):
            return "TransformerLens compatibility mode is on"
        if hf_compat.attention_implementation(self.hf_config) != "eager":
            return "the HF model does not use eager attention"
        module_api = torch.nn.modules.module
        if any(getattr(module_api, name, None) for name in GLOBAL_HOOKS):
            return "a global PyTorch module hook is registered"
        if any(self.empty_dicts) or any(len(d) != len(keys) or any(k not in keys for k in d) for d, keys in self.own_dicts):
            reason = self._foreign_hook()
            if reason is not None:
                return reason
            self._index_hook_dicts()  # only benign hooks changed (re-wired, or HF's installed)
        if any(tl_compat.partial_forward_active(block) for block in self.blocks):
            return "start_at_layer / stop_at_layer is active"
        return None

    def _foreign_hook(self) -> str | None:
        """The first hook inside a block that is not benign (see :meth:`_index_hook_dicts`), described."""
        for block, path, module in self.watched:
            own = capture_hook_ids(block)
            for dict_name in HOOK_DICTS:
                hooks = module.__dict__[dict_name]
                if len(benign_keys(hooks, own)) != len(hooks):
                    return f"a hook is attached at {path!r}"
        return None

    def own_hook_ids(self) -> set[int]:
        """Ids of all capture hooks the bridge registered in its blocks."""
        return set().union(*(capture_hook_ids(b) for b in self.blocks))

    @contextmanager
    def swapped(self, attention: str = "eager") -> Iterator[None]:
        """The HF layers in place of the bridge's, running ``attention``, for one call.

        With SDPA the model config names it for the call too, so HF builds the mask SDPA
        wants (a boolean or no mask instead of the eager additive one, which would send
        SDPA to its slow, memory-hungry fallback).
        """
        config = self.hf_config
        kernel = hf_compat.attention_implementation(config)
        self.parent._modules[self.attr] = self.layers
        try:
            if attention != kernel:
                hf_compat.set_attention_implementation(config, attention)
            yield
        finally:
            self.parent._modules[self.attr] = self.bridged_layers
            if hf_compat.attention_implementation(config) != kernel:
                hf_compat.set_attention_implementation(config, kernel)
