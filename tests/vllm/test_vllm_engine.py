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

    return VllmEngine(max_num_batched_tokens=STEP_TOKENS)


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


def test_bad_steering_is_refused_in_one_line(vllm_engine, prompts, direction):
    with pytest.raises(IndexError, match="out of range"):
        vllm_engine.generate(prompts[:1], CFG, steering=Steering(direction, 30, 1.0), progress=False)
    with pytest.raises(ValueError, match="width"):
        vllm_engine.generate(prompts[:1], CFG, steering=Steering(torch.ones(64), 3, 1.0), progress=False)
    with pytest.raises(NotImplementedError, match="derive with --engine bridge"):
        from lens_steer.engines.base import ResidualSums

        vllm_engine.generate(prompts[:1], CFG, residuals=ResidualSums(1, 30, 576), progress=False)
    # the engine still works afterwards, unsteered
    assert vllm_engine.generate(prompts[:1], CFG, progress=False)[0].response_ids
