"""The vLLM engine against the bridge engine on the embedded model (fp32): greedy agreement plain and
steered (both modes), steering that changes the output, mixed batches, single mode under chunked
prefill. Run by `make test-vllm` (after `make setup-vllm`); skipped, with the reason, without vLLM."""

from __future__ import annotations

import torch
import pytest

from lens_steer.config import GenerationConfig
from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
from lens_steer.engines.base import Steering
from lens_steer.engines.bridge import BridgeEngine
from lens_steer.engines.vllm import vllm_available
from lens_steer.prompts import encode_prompt

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(bool(vllm_available()), reason=vllm_available() or "ok")]

CFG = GenerationConfig(max_new_tokens=24, batch_size=16)
STEP_TOKENS = 32  # tokens per vLLM step: every prompt here is longer, so every prefill is chunked
LAYER = 15


@pytest.fixture(scope="module")
def vllm_engine():
    from lens_steer.engines.vllm import VllmEngine

    engine = VllmEngine(max_num_batched_tokens=STEP_TOKENS)
    yield engine
    engine.close()  # one open engine per process: the next module's may start


@pytest.fixture(scope="module")
def bridge(smol):
    return BridgeEngine(smol)


@pytest.fixture(scope="module")
def prompts(vllm_engine):
    qs = load_questions_jsonl(demo_questions_path("heldout")) + load_questions_jsonl(demo_questions_path("derive"))
    out = [encode_prompt(vllm_engine.tokenizer, q.question, "direct") for q in qs[:16]]
    assert min(len(p) for p in out) > STEP_TOKENS
    return out


@pytest.fixture(scope="module")
def direction():
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    return v / v.norm()


def _same(a, b) -> int:
    return sum(x.response_ids == y.response_ids for x, y in zip(a, b, strict=True))


def test_identity_matches_the_bridge(vllm_engine, bridge):
    assert vllm_engine.info == bridge.info  # same id, depth, width and embedding fingerprint


@pytest.mark.parametrize("mode,coeff", [(None, 0.0), ("continuous", 6.0), ("single", 30.0)])
def test_greedy_agrees_with_the_bridge(vllm_engine, bridge, prompts, direction, mode, coeff):
    steering = Steering(direction, LAYER, coeff, mode) if mode else None
    a = vllm_engine.generate(prompts, CFG, steering=steering, progress=False)
    b = bridge.generate(prompts, CFG, steering=steering, progress=False)
    agree = _same(a, b)
    print(f"{mode or 'plain'}: {agree}/16 greedy responses equal to the bridge engine's")
    assert agree >= 14
    if mode:  # a steering that does nothing must not pass: it changes answers, on both engines alike
        plain = vllm_engine.generate(prompts, CFG, progress=False)
        changed = len(prompts) - _same(a, plain)
        print(f"{mode}: steering changed {changed}/16 responses")
        assert changed >= 4


def test_mixed_batch_equals_each_request_alone(vllm_engine, prompts, direction):
    plans = [None, Steering(direction, LAYER, 6.0, "continuous"), Steering(direction, 10, 30.0, "single"),
             (Steering(direction, 5, 3.0, "continuous"), Steering(-direction, 20, 20.0, "single"))] * 2
    mixed = vllm_engine.generate(prompts[:8], CFG, steering=plans, progress=False)
    alone = [vllm_engine.generate([p], CFG, steering=s, progress=False)[0] for p, s in zip(prompts[:8], plans)]
    assert _same(mixed, alone) == 8


def test_prefix_cache_is_keyed_by_the_steering(vllm_engine, prompts, direction):
    """Cached prefixes are reused between requests steered alike (or both unsteered), never across
    steerings; outputs stay those of each request alone."""
    qs = load_questions_jsonl(demo_questions_path("derive"))
    long = [encode_prompt(vllm_engine.tokenizer, " ".join(q.question for q in qs[i:i + 12]), "direct")
            for i in range(0, 12, 3)]
    assert min(map(len, long)) > 2 * vllm_engine.block_size  # full blocks to cache
    single = Steering(direction, LAYER, 30.0, "single")
    plain1 = vllm_engine.generate(long, CFG, progress=False)
    steered1 = vllm_engine.generate(long, CFG, steering=single, progress=False)
    assert vllm_engine.last_cached_tokens == [0] * len(long)  # the unsteered blocks never serve it
    steered2 = vllm_engine.generate(long, CFG, steering=single, progress=False)
    hits_steered = vllm_engine.last_cached_tokens
    other = vllm_engine.generate(long, CFG, steering=Steering(direction, LAYER, 31.0, "single"), progress=False)
    assert vllm_engine.last_cached_tokens == [0] * len(long)  # another coefficient: another key
    plain2 = vllm_engine.generate(long, CFG, progress=False)
    hits_plain = vllm_engine.last_cached_tokens
    print(f"prefix cache: {sum(hits_plain)} plain and {sum(hits_steered)} steered prompt tokens reused over "
          f"{sum(map(len, long))} prompt tokens; none across steerings")
    assert sum(hits_plain) > 0 and sum(hits_steered) > 0  # the cache is on and reused
    assert _same(plain1, plain2) == len(long) and _same(steered1, steered2) == len(long)
    assert _same(steered1, plain1) < len(long) and _same(other, plain1) < len(long)


def test_bad_steering_is_refused_in_one_line(vllm_engine, prompts, direction):
    from lens_steer.engines.base import ResidualSums

    with pytest.raises(IndexError, match="out of range"):
        vllm_engine.generate(prompts[:1], CFG, steering=Steering(direction, 30, 1.0), progress=False)
    with pytest.raises(ValueError, match="width"):
        vllm_engine.generate(prompts[:1], CFG, steering=Steering(torch.ones(64), 3, 1.0), progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        vllm_engine.generate(prompts[:2], CFG, residuals=ResidualSums(1, 30, 576), progress=False)
    # the engine still works afterwards, unsteered
    assert vllm_engine.generate(prompts[:1], CFG, progress=False)[0].response_ids


@pytest.mark.parametrize("mode,coeff", [(None, 0.0), ("continuous", 6.0), ("single", 30.0)])
def test_first_token_logprobs_agree_with_the_bridge(vllm_engine, bridge, prompts, direction, mode, coeff):
    steering = Steering(direction, LAYER, coeff, mode) if mode else None
    a = vllm_engine.first_token_logprobs(prompts, steering=steering, top_k=10)
    b = bridge.first_token_logprobs(prompts, steering=steering, top_k=10)
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        common = set(x) & set(y)
        assert len(common) >= 8  # the same top tokens (ties at the cut-off may swap)
        worst = max(worst, max(abs(x[t] - y[t]) for t in common))
    print(f"{mode or 'plain'}: first-token log-probabilities, largest difference {worst:.2e} over 16 prompts x top 10")
    assert worst <= 1e-3
    if mode:
        plain = bridge.first_token_logprobs(prompts, top_k=10)
        assert any(set(p) != set(q) or max(abs(p[t] - q[t]) for t in p) > 0.1 for p, q in zip(plain, b))


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_residual_means_match_the_bridge(vllm_engine, bridge, prompts, positions):
    from lens_steer.method.collect import collect_residual_means

    cfg = GenerationConfig(max_new_tokens=16, batch_size=16)  # 16 short of the step: every prefill is chunked
    a = collect_residual_means(vllm_engine, prompts, cfg, positions=positions, progress=False)
    b = collect_residual_means(bridge, prompts, cfg, positions=positions, progress=False)
    same = [i for i, (x, y) in enumerate(zip(a.generations, b.generations)) if x.response_ids == y.response_ids]
    assert len(same) >= 14
    assert torch.equal(a.counts[same], b.counts[same])  # stop excluded, cut responses' last token included
    expect = torch.tensor([len(g.response_ids) + (len(g.prompt_ids) if positions == "all" else 0)
                           for g in a.generations])
    assert torch.equal(a.counts, expect)
    cos = torch.nn.functional.cosine_similarity(a.means[same], b.means[same], dim=-1)
    rel = ((a.norms[same] - b.norms[same]).abs() / b.norms[same]).max().item()
    print(f"{positions}: per-request residual means, cosine to the bridge min {cos.min().item():.6f} over "
          f"{len(same)} requests x 30 layers; mean norms within {rel:.1e}")
    assert cos.min() >= 0.9999 and rel <= 1e-4


def test_derived_vector_matches_the_bridge(vllm_engine, bridge):
    from lens_steer.method.derive import derive_cot_vector

    qs = load_questions_jsonl(demo_questions_path("derive"))[:12]
    cfg = GenerationConfig(max_new_tokens=32, batch_size=12)
    a = derive_cot_vector(vllm_engine, qs, generation=cfg, progress=False)
    b = derive_cot_vector(bridge, qs, generation=cfg, progress=False)
    cos = torch.nn.functional.cosine_similarity(a.directions, b.directions, dim=-1)
    print(f"derived vector (12 questions, 32 tokens): per-layer cosine to the bridge engine's min "
          f"{cos.min().item():.6f}, mean {cos.mean().item():.6f}")
    assert cos.min() >= 0.999
    assert a.metadata.engine == "vllm"


def test_an_architecture_it_cannot_steer_is_refused_in_one_line(tmp_path, capsys):
    from transformers import GPT2Config

    from lens_steer.cli import main
    from lens_steer.compat import vllm as vllm_compat
    from lens_steer.engines.vllm import VllmEngine

    GPT2Config(n_layer=2, n_embd=128, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot steer GPT2LMHeadModel") as err:
        VllmEngine(str(tmp_path))
    assert "\n" not in str(err.value) and all(a in str(err.value) for a in vllm_compat.ARCHITECTURES)
    assert main(["generate", "--engine", "vllm", "--model", str(tmp_path), "--prompt", "hi"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot steer GPT2LMHeadModel" in lines[0]


def test_a_vllm_outside_the_tested_range_is_refused_in_one_line():
    from lens_steer.compat import require
    from lens_steer.compat import vllm as vllm_compat

    with pytest.raises(ImportError, match=r"tested with vllm>=0\.32,<0\.33, but vllm 0\.34\.0") as err:
        require("vllm", vllm_compat.SUPPORTED, version="0.34.0")
    assert "\n" not in str(err.value)
    from packaging.specifiers import SpecifierSet

    assert vllm_compat.VERSION is not None and vllm_compat.VERSION in SpecifierSet(vllm_compat.SUPPORTED)


def test_the_v2_model_runner_is_refused_in_one_line(monkeypatch):
    from lens_steer.compat import vllm as vllm_compat

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="V1 model runner only"):
        vllm_compat.runner_environment()
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    assert vllm_compat.runner_environment().get("VLLM_USE_V2_MODEL_RUNNER", "0") == "0"
