"""The layer convention shared with other programs, written once (the README shows :func:`layer_table_markdown`).

lens_steer's layer ``l`` (0-based) is the residual stream after block ``l``. Every program below adds a
steering vector at that same point; only the name differs:

=====================================  ==================================================================
program                                layer ``l`` is
=====================================  ==================================================================
lens_steer, TransformerLens            ``blocks.l.hook_resid_post``
Hugging Face transformers              the output of ``model.layers[l]``, ``hidden_states[l+1]``
llama.cpp control vector (GGUF)        tensor ``direction.l``, added to block ``l``'s output
repeng ``ControlVector``               ``directions[l]``; its ``ControlModel`` wraps ``model.layers[l]``
steering-vectors                       ``layer_activations[l]`` with ``layer_type="decoder_block"``
lm-evaluation-harness ``steered``      hookpoint ``layers.l`` (module name under the HF base model)
=====================================  ==================================================================

llama.cpp has no tensor for block 0 (``direction.0`` makes it skip the whole file), so layer 0 cannot be
exported to a GGUF. Every format here adds at every position, prompt included: that is lens_steer's
*continuous* mode; *single* (prompt positions only) has no counterpart in them.
"""

from __future__ import annotations

import re

__all__ = ["LAYER_TABLE", "gguf_layer", "gguf_tensor_name", "hidden_states_index", "layer_table_markdown",
           "lm_eval_hookpoint"]

LAYER_TABLE: tuple[tuple[str, str], ...] = (
    ("lens_steer, TransformerLens", "`blocks.l.hook_resid_post`"),
    ("Hugging Face transformers", "output of `model.layers[l]` = `hidden_states[l+1]` (`hidden_states[0]` is the embedding)"),
    ("llama.cpp control vector (GGUF)", "tensor `direction.l`, added to block l's output (no `direction.0`: block 0 cannot be exported)"),
    ("repeng `ControlVector`", "`directions[l]` (its `ControlModel` wraps `model.layers[l]`; `export_gguf` writes `direction.l`)"),
    ("steering-vectors", '`layer_activations[l]`, `layer_type="decoder_block"`'),
    ("lm-evaluation-harness `steered`", "hookpoint `layers.l` (module name under the HF base model)"),
)
"""``(program, what layer l is called there)``, for the README and docs."""

GGUF_PREFIX = "direction."
LM_EVAL_HOOKPOINT = "layers.{layer}"


def layer_table_markdown() -> str:
    """:data:`LAYER_TABLE` as a Markdown table (the README carries this text verbatim; a test checks it)."""
    rows = ["| program | layer l (0-based) is |", "|---|---|"]
    rows += [f"| {name} | {where} |" for name, where in LAYER_TABLE]
    return "\n".join(rows)


def gguf_tensor_name(layer: int) -> str:
    """The llama.cpp control-vector tensor of lens_steer layer ``layer``; ``ValueError`` for block 0."""
    if layer == 0:
        raise ValueError("llama.cpp control vectors have no direction for block 0 (a `direction.0` tensor makes "
                         "llama.cpp skip the whole file): layer 0 cannot be exported to GGUF")
    if layer < 0:
        raise ValueError(f"layer {layer} is negative")
    return f"{GGUF_PREFIX}{layer}"


def gguf_layer(name: str) -> int:
    """The layer of a control-vector tensor name, read as llama.cpp does (``direction.<int>``, int > 0);
    ``ValueError`` naming what llama.cpp would reject."""
    match = re.fullmatch(r"direction\.([0-9]+)", name)
    if match is None:
        raise ValueError(f"tensor {name!r} is not a control-vector direction (llama.cpp reads `direction.<layer>`)")
    layer = int(match.group(1))
    if layer == 0:
        raise ValueError("tensor 'direction.0' is invalid for llama.cpp (there is no control vector for block 0)")
    return layer


def lm_eval_hookpoint(layer: int, template: str = LM_EVAL_HOOKPOINT) -> str:
    """lm-evaluation-harness' hookpoint of lens_steer layer ``layer`` (``layers.{layer}`` for Llama, Mistral,
    Qwen and Gemma, whose base model keeps its blocks in ``layers``)."""
    return template.format(layer=layer)


def hidden_states_index(layer: int) -> int:
    """Index into a Hugging Face ``output_hidden_states`` tuple of the stream after block ``layer``."""
    return layer + 1
