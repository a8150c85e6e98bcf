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
hooks themselves: the engine's calls hold the bridge's lock, see :mod:`lens_steer.engines.bridge`).

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
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from lens_steer.compat.transformers import supports_sdpa
from lens_steer.engines.hf_layers import (
    GLOBAL_HOOKS, HOOK_DICTS, FastPathLayers, Unsupported, benign_keys, wants_outputs,
)

logger = logging.getLogger(__name__)

__all__ = ["ATTENTION_KERNELS", "FAST_PATH_ENV", "VERIFIED_ARCHITECTURES", "FastPath"]

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

ATTENTION_KERNELS: tuple[str, ...] = ("eager", "sdpa")


def _env_setting() -> str:
    return os.environ.get(FAST_PATH_ENV, "").strip().lower()


def _disabled_by_env() -> bool:
    return _env_setting() in ("0", "false", "no", "off")


def _sdpa_ok(hf) -> bool:
    """The model supports SDPA, its config is flat (switching the kernel touches no sub-config) and
    its attention has no logit soft-capping (SDPA would silently drop it)."""
    config = hf.config
    return (supports_sdpa(hf) and not getattr(config, "sub_configs", None)
            and getattr(config, "attn_logit_softcapping", None) is None)


def _has_any_hook(model, layers: FastPathLayers) -> bool:
    """Whether any hook (TransformerLens or PyTorch, bar the bridge's own) is attached anywhere."""
    module_api = torch.nn.modules.module
    if any(getattr(module_api, name, None) for name in GLOBAL_HOOKS):
        return True
    own = layers.own_hook_ids()
    return any(len(benign_keys(m.__dict__[d], own)) != len(m.__dict__[d])
               for m in model.original_model.modules() for d in HOOK_DICTS)


def _verify(model, layers: FastPathLayers) -> bool:
    """Compare both paths once (eager kernel) on a small padded batch: prompt pass and one cached step."""
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
        bridge, fast = run(nullcontext()), run(layers.swapped("eager"))
    same = all(torch.equal(x, y) for x, y in zip(bridge, fast))
    if not same:
        diff = max(float((x - y).abs().max()) for x, y in zip(bridge, fast))
        logger.warning("fast path disabled for %s: its logits differ from the bridge's (max |diff| %.3g)",
                       getattr(model.cfg, "architecture", "this model"), diff)
    return same


class FastPath:
    """One bridge's fast-path settings (allowed or not, attention kernel) and its rebuilt layers.

    Owned by the bridge's engine (:class:`lens_steer.engines.bridge.BridgeEngine`); nothing is
    stored on the bridge itself.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.enabled = True
        self.attention: str | None = None  # None: the environment's choice, else the model's default
        self._layers: FastPathLayers | str | None = None

    # ----------------------------------------------------------- settings
    def attention_choice(self) -> str:
        """The kernel chosen: :meth:`set`'s, else ``$LENS_STEER_FAST_PATH``'s, else SDPA where supported."""
        if self.attention is not None:
            return self.attention
        env = _env_setting()
        return env if env in ATTENTION_KERNELS else ("sdpa" if _sdpa_ok(self.model.original_model) else "eager")

    def set(self, enabled: bool = True, *, attention: str | None = None) -> None:
        """Allow or forbid the fast path, and choose its kernel (``None`` keeps the current choice).

        Raises:
            ValueError: unknown kernel, or ``"sdpa"`` on a model class without SDPA support.
        """
        if attention is not None:
            if attention not in ATTENTION_KERNELS:
                raise ValueError(f"unknown attention kernel {attention!r}; expected one of {ATTENTION_KERNELS}")
            if attention == "sdpa" and not _sdpa_ok(self.model.original_model):
                raise ValueError(f"{type(self.model.original_model).__name__}: SDPA is unsupported or its config has "
                                 "sub-configs")
            self.attention = attention
        self.enabled = bool(enabled)

    @contextmanager
    def options(self, *, enabled: bool | None = None, attention: str | None = None) -> Iterator[None]:
        """:meth:`set` for the length of a ``with`` block; the previous settings come back after it."""
        saved = (self.enabled, self.attention)
        try:
            self.set(self.enabled if enabled is None else enabled, attention=attention)
            yield
        finally:
            self.enabled, self.attention = saved

    # ----------------------------------------------------------- state
    def _state(self) -> FastPathLayers | str:
        if self._layers is None:
            try:
                self._layers = FastPathLayers(self.model)
            except Unsupported as exc:
                self._layers = str(exc)
                logger.info("fast path unavailable for this model: %s", self._layers)
        return self._layers

    def blocker(self, *, full: bool) -> str | None:
        """Why a call takes the bridge path, or ``None``; ``full`` also re-syncs and verifies."""
        if _disabled_by_env():
            return f"disabled by ${FAST_PATH_ENV}"
        if not self.enabled:
            return "disabled for this model (set_fast_path / fast_path_disabled)"
        state = self._state()
        if isinstance(state, str):
            return state
        if full:
            try:
                state.sync()
            except Unsupported as exc:
                return str(exc)
        reason = state.blocker(self.model)
        if reason is not None:
            return reason
        if state.verified is None and full:
            if str(getattr(self.model.cfg, "architecture", "")) in VERIFIED_ARCHITECTURES:
                state.verified = True
            elif not _has_any_hook(self.model, state):
                state.verified = _verify(self.model, state)
        if state.verified is None:
            return "architecture not verified yet (it is checked on the first hook-free call)"
        if not state.verified:
            return "this architecture's fast-path outputs differ from the bridge's"
        return None

    def status(self) -> str | None:
        """Why a forward call made now would take the bridge path, or ``None`` if fast."""
        return self.blocker(full=True)

    def kernel_to_run(self, *, warn: bool = False) -> str:
        """:meth:`attention_choice`, with SDPA replaced by eager where the model cannot run it."""
        attention = self.attention_choice()
        if attention == "sdpa" and not _sdpa_ok(self.model.original_model):
            if warn:
                logger.warning("%s: SDPA is unsupported or the config has sub-configs; the fast path runs eager "
                               "attention", type(self.model.original_model).__name__)
            return "eager"
        return attention

    def attention_kernel(self) -> str:
        """The attention a hook-free forward runs now, for records: ``"sdpa"`` or ``"eager"`` on the fast
        path, ``"eager (bridge path)"`` otherwise."""
        if self.status() is not None:
            return "eager (bridge path)"
        return self.kernel_to_run()

    def forward(self) -> Callable[..., Any]:
        """A callable that runs ``model.original_model(*args, **kwargs)``, on the fast path when it applies.

        Make one per generation (batch): on creation it re-syncs the rebuilt layers with the
        bridge's parameters and verifies the architecture once; on every call it checks the
        attached hooks and flags again, so a hook added or removed between two calls (e.g. a
        pattern hook attached half-way through a generation) takes effect at the next call. A
        call asking for ``output_hidden_states`` / ``output_attentions`` takes the bridge path
        (transformers records those with hooks on the bridged layers).
        """
        hf = self.model.original_model
        state = None if self.blocker(full=True) is not None else self._layers
        attention = self.kernel_to_run(warn=True)

        def forward(*args, **kwargs):
            if state is None or wants_outputs(hf, kwargs) or self.blocker(full=False) is not None:
                return hf(*args, **kwargs)
            with state.swapped(attention):
                return hf(*args, **kwargs)

        return forward
