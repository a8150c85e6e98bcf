"""The transformers internals lens_steer uses, behind the tested range :data:`SUPPORTED` (checked on import).

Checked against transformers 5.23.0 (the unit and integration tests) and 5.19.0 (the version the vLLM CPU
build installs; each name below read in its source). 5.24 is outside: its bridge path leaves a passed
``DynamicCache`` empty, so KV-cached steps go wrong. Private names touched, and why:

* ``PreTrainedModel._supports_sdpa``: whether a model class can run SDPA attention (no public query);
  the fast path picks its kernel from it.
* ``PretrainedConfig._attn_implementation`` (read and set): the attention kernel a model runs. The public
  ``set_attn_implementation`` rewires every submodule; the fast path switches the kernel for one call of
  its rebuilt layers and restores it in ``finally``.
* ``transformers.utils.output_capturing._active_collector``: set while a call collects per-layer outputs
  (``output_hidden_states`` / ``output_attentions``) through hooks, which the fast path's rebuilt layers
  lack; and the hook that module installs (``output_capturing_hook``), recognised by module and name so
  the fast path does not count it as a user's hook.
* ``PreTrainedModel.hf_quantizer`` (no underscore, but no public way to detach it): cleared, with the
  config's ``quantization_config``, while de-quantised GGUF weights are saved as plain safetensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lens_steer.compat import require

__all__ = ["SUPPORTED", "VERSION", "attention_implementation", "detached_quantizer", "is_output_capture_hook",
           "output_collector_active", "set_attention_implementation", "supports_sdpa"]

SUPPORTED = ">=5.19,<5.24"
"""The transformers versions lens_steer is tested with (the same range as in ``pyproject.toml``)."""

VERSION = require("transformers", SUPPORTED)
"""The installed transformers version (inside :data:`SUPPORTED`)."""

_OUTPUT_CAPTURING_MODULE = "transformers.utils.output_capturing"


def supports_sdpa(hf) -> bool:
    """Whether the HF model's class supports SDPA attention."""
    return bool(getattr(hf, "_supports_sdpa", False))


def attention_implementation(config) -> str | None:
    """The attention kernel an HF config names (``"eager"`` for a config without the attribute)."""
    return getattr(config, "_attn_implementation", "eager")


def set_attention_implementation(config, kernel: str | None) -> None:
    """Name ``kernel`` as the config's attention kernel (read by the attention layers on each call)."""
    config._attn_implementation = kernel


def output_collector_active() -> bool:
    """Whether the current call collects per-layer outputs through transformers' capture hooks."""
    from transformers.utils.output_capturing import _active_collector

    return _active_collector.get() is not None


def is_output_capture_hook(fn) -> bool:
    """Whether ``fn`` is the hook transformers installs (once, permanently) to capture per-layer outputs;
    it records only while :func:`output_collector_active`."""
    return (getattr(fn, "__module__", "") == _OUTPUT_CAPTURING_MODULE
            and getattr(fn, "__qualname__", "").endswith("output_capturing_hook"))


@contextmanager
def detached_quantizer(hf) -> Iterator[None]:
    """The HF model without its quantiser (and its config without ``quantization_config``) for the block,
    so that de-quantised weights save as plain floats; both are put back in ``finally``."""
    quantizer, qcfg = getattr(hf, "hf_quantizer", None), getattr(hf.config, "quantization_config", None)
    hf.hf_quantizer = None
    if qcfg is not None:
        del hf.config.quantization_config
    try:
        yield
    finally:
        hf.hf_quantizer = quantizer
        if qcfg is not None:
            hf.config.quantization_config = qcfg
