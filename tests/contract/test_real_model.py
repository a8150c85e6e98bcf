"""The engine contract on a real model of a second architecture: Qwen2.5-Coder-0.5B-Instruct (Qwen2, the named
offline model ``qwen2.5-coder-0.5b-instruct``, ``make setup-qwen``), every registered engine that can run here
against the bridge engine on 16 prompts (the 4 held-out demo questions and 12 demo derivation questions; the steering direction is a
seeded random one of a fixed size, so no prompt was seen in making it): greedy tokens unsteered, continuous and single, first-token
log-probabilities, and steering that changes the answers. vLLM's case carries the ``vllm`` mark (``make
test-vllm`` installs the model's parts first)."""

from __future__ import annotations

import gc

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
from lens_steer.engines.base import ResidualSums, Steering
from lens_steer.engines.registry import engine_names, engine_spec
from lens_steer.models.files import ModelLoadError, named_gguf_path

MODEL = "qwen2.5-coder-0.5b-instruct"
CFG = GenerationConfig(max_new_tokens=32, batch_size=16)
N_PROMPTS = 16  # the 4 packaged held-out demo questions, then 12 of the demo derivation questions
LAYER = 12  # the middle of its 24 blocks
SCALE = {"continuous": 0.25, "single": 1.0}  # |c v| as a fraction of the layer's mean residual norm
OPTIONS = {"vllm": dict(kv_cache_memory_bytes=1 << 29)}  # 512 MiB of KV cache: 16 short requests need far less
LOGPROB_TOL = 2e-3  # fp32, one machine; vLLM's CPU kernels (oneDNN GEMMs, its own attention) round otherwise


def _installed() -> str | None:
    try:
        named_gguf_path(MODEL)
    except ModelLoadError as exc:
        return str(exc)
    return None


def _param(name: str):
    marks = [pytest.mark.vllm] if name == "vllm" else []
    reason = engine_spec(name).unavailable() or _installed()
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def reference():
    """The bridge's answers, computed before any other engine starts (and then freed)."""
    from lens_steer.engines.registry import open_engine
    from lens_steer.prompts import encode_prompt

    bridge = open_engine("bridge", MODEL)
    questions = (load_questions_jsonl(demo_questions_path("heldout"))
                 + load_questions_jsonl(demo_questions_path("derive")))[:N_PROMPTS]
    assert len(questions) == N_PROMPTS
    prompts = [encode_prompt(bridge.tokenizer, q.question, "direct") for q in questions]
    sums = ResidualSums(len(prompts), bridge.info.n_layers, bridge.info.d_model, "all")
    bridge.generate(prompts, GenerationConfig(max_new_tokens=1), residuals=sums, progress=False)
    norm = float(sums.means()[2][:, LAYER].mean())
    direction = torch.nn.functional.normalize(
        torch.randn(bridge.info.d_model, generator=torch.Generator().manual_seed(3)), dim=0)
    steerings = {None: None, **{m: Steering(SCALE[m] * norm * direction, LAYER, 1.0, m) for m in SCALE}}
    ref = {"info": bridge.info, "prompts": prompts, "steerings": steerings}
    for mode, s in steerings.items():
        ref["greedy", mode] = [g.response_ids for g in bridge.generate(prompts, CFG, steering=s, progress=False)]
        ref["logprobs", mode] = bridge.first_token_logprobs(prompts, steering=s, top_k=5)
    del bridge
    gc.collect()
    return ref


@pytest.mark.parametrize("name", [_param(n) for n in engine_names() if n != "bridge"])
def test_real_model_agrees_with_the_bridge(name, reference):
    engine = engine_spec(name).open(MODEL, **OPTIONS.get(name, {}))
    try:
        assert engine.info == reference["info"]
        lines, greedy = [], {}
        for mode, s in reference["steerings"].items():
            greedy[mode] = [g.response_ids for g in engine.generate(reference["prompts"], CFG, steering=s,
                                                                    progress=False)]
            lp = engine.first_token_logprobs(reference["prompts"], steering=s, top_k=5)
            gap = max(max(abs(a[t] - b[t]) for t in set(a) & set(b)) for a, b in zip(lp, reference["logprobs", mode]))
            same = sum(x == y for x, y in zip(greedy[mode], reference["greedy", mode]))
            lines.append(f"{mode or 'plain'}: greedy {same}/{N_PROMPTS} equal, first-token logprobs within {gap:.1e}")
            assert same == N_PROMPTS, lines[-1]
            assert gap <= LOGPROB_TOL, lines[-1]
        changed = {m: sum(x != y for x, y in zip(greedy[m], greedy[None])) for m in SCALE}
        print(f"\n{MODEL} on {name} vs the bridge: " + "; ".join(lines)
              + f"; steering changed {changed['continuous']}/{N_PROMPTS} (continuous), {changed['single']}/{N_PROMPTS} "
                f"(single)")
        assert all(n >= 4 for n in changed.values())
    finally:
        close = getattr(type(engine), "close", None)
        if close is not None:
            close(engine)
