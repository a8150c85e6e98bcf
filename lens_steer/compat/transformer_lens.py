"""The TransformerLens internals lens_steer uses, behind the tested range :data:`SUPPORTED` (checked on import).

Checked against transformer-lens 4.3.0 (the unit and integration tests). Everything here reads the
``TransformerBridge`` (``transformer_lens.model_bridge``), used only by the fast path
(:mod:`lens_steer.engines.hf_layers`), which must know exactly which hooks and states the bridge itself
keeps inside a block:

* ``GeneralizedComponent`` (``transformer_lens.model_bridge.generalized_components.base``, not exported
  at the package top): the class of every bridge component, to tell a component from an HF module.
* ``_original_component``: the submodule key under which a component holds the HF module it wraps. The
  public ``original_component`` property reads the same key; the fast path needs the key itself, to
  notice when the wrapped module is replaced (it records ``(component._modules, key, module)``).
* ``block._capture_hook_handles``: the PyTorch hooks the bridge registers inside a block (to capture
  activations for its own hook points); the fast path counts them as the bridge's, not a user's.
* ``block._maybe_wire_capture_hooks()``: the bridge wires those hooks on a block's first forward;
  calling it early keeps the set fixed, so the per-call check is one pass over the hook dicts.
* ``block._stop_at_layer_idx`` / ``block._start_at_layer_idx``: set for the length of a
  ``stop_at_layer`` / ``start_at_layer`` forward, which the fast path must leave to the bridge.
* ``bridge.compatibility_mode``: set by ``enable_compatibility_mode()`` (no public getter); the bridge
  computes differently in that mode, so the fast path must not run.

Hooks themselves are attached with public API only (``HookPoint.add_hook(..., level=)`` and
``HookPoint.remove_hooks(level=)``, see :mod:`lens_steer.engines.hooks`).
"""

from __future__ import annotations

from torch import nn

from lens_steer.compat import require

__all__ = ["SUPPORTED", "VERSION", "WRAPPED_MODULE_KEY", "capture_hook_ids", "in_compatibility_mode",
           "is_component", "partial_forward_active", "wire_capture_hooks"]

SUPPORTED = ">=4.3,<4.4"
"""The transformer-lens versions lens_steer is tested with (the same range as in ``pyproject.toml``)."""

VERSION = require("transformer-lens", SUPPORTED)
"""The installed transformer-lens version (inside :data:`SUPPORTED`)."""

WRAPPED_MODULE_KEY = "_original_component"
"""The ``_modules`` key under which a bridge component holds the HF module it wraps."""


def is_component(module: nn.Module) -> bool:
    """Whether ``module`` is a bridge component (a wrapper around an HF module), not an HF module."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return isinstance(module, GeneralizedComponent)


def capture_hook_ids(block: nn.Module) -> set[int]:
    """Ids of the PyTorch hooks (forward pre-hooks, in 4.3) the bridge itself registered inside ``block``."""
    return {h.id for h in getattr(block, "_capture_hook_handles", ())}


def wire_capture_hooks(block: nn.Module) -> None:
    """Make the bridge register ``block``'s capture hooks now instead of on its first forward."""
    wire = getattr(block, "_maybe_wire_capture_hooks", None)
    if wire is not None:
        wire()


def partial_forward_active(block: nn.Module) -> bool:
    """Whether a ``stop_at_layer`` / ``start_at_layer`` forward is running through ``block``."""
    state = block.__dict__
    return state.get("_stop_at_layer_idx") is not None or state.get("_start_at_layer_idx") is not None


def in_compatibility_mode(bridge) -> bool:
    """Whether the bridge runs in TransformerLens compatibility mode."""
    return bool(bridge.__dict__.get("compatibility_mode", False))
