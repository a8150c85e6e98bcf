"""What the parallel test and its worker share: the tiny model, prompts and steering."""

from __future__ import annotations

from pathlib import Path

import torch

LAYERS = (1, 2)  # steered together: with pipeline parallelism they sit on different stages


def make_tiny_llama(path: Path) -> Path:
    """A seeded random Llama (4 layers, 4 heads of 64 (a head size the CPU attention supports), 2 KV heads: splits over 2 ranks) with the embedded
    model's tokenizer, saved as a plain Hugging Face directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lens_steer.models import embedded_hf_dir

    tok = AutoTokenizer.from_pretrained(embedded_hf_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the init's: peaked, input-dependent next-token logits
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def prompts_for(tokenizer) -> list[list[int]]:
    from lens_steer.prompts import encode_prompt

    qs = ["What is 17 times 3?", "Name a prime number above 50.", "Why is the sky blue?",
          "If a train leaves at 3 pm and travels for 2 hours, when does it arrive?",
          "What is the capital of France?", "Sort these numbers: 5, 2, 9, 1.",
          "How many legs do three spiders have?", "Is 91 a prime number?"]
    return [encode_prompt(tokenizer, q, "direct") for q in qs]


SPEC_COEFF = 60.0  # one generated token steered must move a greedy answer of this peaked model


def token_specs(tokenizer, prompts: list[list[int]], responses: list[list[int]]) -> list[str]:
    """Steering specs that read each request's tokens, from the unsteered answers: a trigger on the token they
    make most often early on, and a region opened by the prompt's last token (the chat template's) and closed by
    their second most frequent token (so they act within a few tokens of a short answer)."""
    from collections import Counter

    from lens_steer.engines.steer_spec import SteerSpec, Strength, Where

    counts = Counter(t for r in responses for t in r[:4])
    frequent = [t for t in sorted(counts, key=lambda t: (-counts[t], t)) if t != prompts[0][-1]
                and tokenizer.encode(tokenizer.decode([t]), add_special_tokens=False) == [t]]
    opener = tokenizer.decode(prompts[0][-1:])
    trigger = SteerSpec(Where.trigger(tokenizer.decode(frequent[:1]), span=3), Strength.step(1, 0.5, 4))
    region = SteerSpec(Where.between(opener, tokenizer.decode(frequent[1:2])), op="add-norm")
    return [trigger.text, region.text]


def steering_direction(d_model: int) -> torch.Tensor:
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(1))
    return v / v.norm()
